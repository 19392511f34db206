"""Which way is better for each metric, without importing a workload (or torch).

Report verbs must run where a plugin is broken or torch is absent, so a metric's direction
comes from, in order: the record itself (`metric_directions`, the workload's declaration,
when the runner wrote it), the workload's reference table (every row states a direction),
then naming rules for the metric families the workloads emit (COCO AP/AR at every IoU,
size and detection count; nuScenes mAP/NDS and mATE..mAAE errors; F1, IoU, accuracy, FP/FN,
threshold shares `_lt_x`/`_ge_x`, OLS, DET/TOP).
A metric none of these covers has no direction: parity then says DIFFERS, never WORSE.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from harness.records import Record
from harness.reference import MEMORY_METRIC, RefRow

_RULES: tuple[tuple[str, str, str], ...] = (
    (r"^mA[TSOVA]E$", "lower", "nuScenes true-positive error"),
    (r"(^|_)(FP|FN|false_positives?|false_negatives?)$", "lower", "false positives/negatives"),
    (r"_lt_[\d.]+$", "lower", "share of samples below a threshold"),
    (r"_ge_[\d.]+$", "higher", "share of samples at or above a threshold"),
    (r"(^|_)(error|err|loss|latency|time_s|time)$", "lower", "error/loss/time"),
    (r"^(fps|samples_per_s)$", "higher", "throughput"),
    (rf"^{MEMORY_METRIC}$", "lower", "memory"),
    # COCO: AP, AP50, AP75, APs/APm/APl, AR1/AR10/AR100, ARs/ARm/ARl (also AP_small spellings)
    (r"^m?AP(\d+|[sml]|_\w+)?$", "higher", "COCO/nuScenes average precision"),
    (r"^m?AR(\d+|[sml]|_\w+)?$", "higher", "COCO average recall"),
    (r"(?i)(^|_)(nds|ols|m?iou|f1|f_score|accuracy|acc|recall|precision|ap|ar)"
     r"(_(mean|median))?$", "higher", "score"),
    (r"^(DET|TOP)_[a-z]+$", "higher", "OpenLane-V2 score"),
)


def rule_direction(metric: str) -> tuple[str, str]:
    """(direction, why) from the metric's name; ("", "unknown") when no rule covers it."""
    for pattern, direction, why in _RULES:
        if re.search(pattern, metric):
            return direction, f"name rule ({why})"
    return "", "unknown"


def metric_directions(records: Sequence[Record], rows: Iterable[RefRow] = (),
                      names: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """metric -> (direction, source) for every metric in the records, rows and `names`."""
    out: dict[str, tuple[str, str]] = {}
    for rec in records:
        for metric, direction in (rec.metric_directions or {}).items():
            if direction in ("higher", "lower"):
                out.setdefault(metric, (direction, "workload (record)"))
    for row in rows:
        out.setdefault(row.metric, (row.direction, "reference table"))
    wanted = list(names) + [m for rec in records for m in rec.metrics]
    for metric in wanted:
        if metric not in out:
            out[metric] = rule_direction(metric)
    return out


def headline_order(records: Sequence[Record], rows: Iterable[RefRow] = ()) -> list[str]:
    """The primary metric, then the workload's declared (headline) metrics, then the rest."""
    order: list[str] = []
    emitted = [m for rec in records for m in rec.metrics]
    primary = next((r.primary_metric for r in records if r.primary_metric), "")
    declared = [m for r in records for m in (r.metric_directions or {})]
    for metric in [primary, *declared, *(r.metric for r in rows), *emitted]:
        if metric and metric in emitted and metric not in order:
            order.append(metric)
    return order
