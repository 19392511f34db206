"""`harness check`: match a record to reference rows measured like it, then compare.

Like with like, in this order (reference_results/README.md states the same rules):
1. the record's scale and kind (train | eval) exactly;
2. its configuration: every `key=value` a row was measured with equals the run's resolved
   value, and every configuration key the run overrode is stated by the row. If the
   workload's own table has no such row, `aliases.csv` may say that this workload with these
   overrides *is* another workload at its defaults (`bevdepth` with view_transform=matrixvt is
   `matrixvt`), whose rows are then used;
3. its weights dtype (fp32 weights under autocast vs bf16 weights under DeepSpeed): a row
   stating one never matches a record of the other;
4. the closest of the remaining row groups by backend, precision, world size, mode, device.
Speed and memory rows judge a record only when measured on the same hardware (backend,
device kind, precision, world size, mode); other hardware's rows are shown as information.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Sequence

from harness.comparable import START_KEYS, row_differences
from harness.records import Record
from harness.reference import (
    ALIAS_FILE,
    ANY,
    PERF_METRICS,
    RefRow,
    format_config,
    load_aliases,
    load_table,
    record_device,
    record_kind,
    record_overrides,
    record_setting,
    record_value,
    record_weights_dtype,
    table_path,
)


@dataclasses.dataclass
class Match:
    rows: list[RefRow]
    reason: str
    # Why the run did not train as the rows assume (harness/comparable.py); [] if it did.
    not_comparable: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        r = self.rows[0]
        spans: list[list[int]] = []
        for n in sorted({x.line for x in self.rows}):
            if spans and n == spans[-1][1] + 1:
                spans[-1][1] = n
            else:
                spans.append([n, n])
        where = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
        ws = r.world_size if r.world_size == ANY else f"ws{r.world_size}"
        cfg = f" [{r.config}]" if r.config else ""
        return (f"{Path(r.file).name} lines {where}: {r.kind}{cfg} {r.backend}/{r.device}/"
                f"{r.precision} (weights {r.weights_dtype})/{r.mode}/{ws} — {self.reason}")


def config_diff(row: RefRow, record: Record, covered: frozenset[str] = frozenset()
                ) -> list[str]:
    """The configuration keys on which the row and the run differ, each with both values."""
    settings = {k: v for k, v in row.settings.items() if k not in START_KEYS}
    diffs = []
    for key, want in settings.items():
        have = record_setting(record, key)
        if have is not None and have != want:
            diffs.append(f"{key} (row {want}, record {have})")
    for key, value in record_overrides(record).items():
        if key not in settings and key not in covered:
            diffs.append(f"{key} (record sets {value}, row measured with the default)")
    return diffs


def _axis(row_value: str, record_value: str) -> int:
    return 2 if row_value == record_value else 1 if row_value == ANY else 0


def _record_axes(record: Record) -> dict[str, str]:
    return {"backend": record.backend, "precision": record.precision,
            "mode": str(record.mode), "world_size": str(record.world_size or 1),
            "weights_dtype": record_weights_dtype(record), "device": record_device(record)}


def _reason(row: RefRow, rec: dict[str, str]) -> str:
    parts: list[str] = []
    labels = {"backend": "backend", "precision": "precision", "world_size": "world size",
              "mode": "mode"}
    for axis, label in labels.items():
        rv, mv = getattr(row, axis), rec[axis]
        if rv == mv:
            parts.append(f"same {label}")
        elif rv == ANY:
            parts.append(f"{label} not stated by the source")
        else:
            parts.append(f"other {label} (row {rv}, record {mv})")
    if all(p.startswith("same") for p in parts):
        return "exact match" + ("" if row.device in (rec["device"], "unstated")
                                else f" (row device {row.device})")
    return ", ".join(parts)


def _match_in(record: Record, rows: Sequence[RefRow], name: str,
              covered: frozenset[str] = frozenset()) -> tuple[Match | None, str]:
    scale, kind = record.scale, record_kind(record)
    same_scale = [r for r in rows if r.scale == scale]
    if not same_scale:
        scales = sorted({r.scale for r in rows})
        return None, (f"{name} has no rows for scale '{scale}' "
                      f"(scales present: {', '.join(scales) or 'none'})")
    same_kind = [r for r in same_scale if r.kind == kind]
    if not same_kind:
        return None, (f"{name} has no {kind} rows for scale '{scale}' (a {kind} record is "
                      f"compared only with {kind} rows)")
    groups: dict[tuple[str, ...], list[RefRow]] = {}
    for r in same_kind:
        groups.setdefault(r.group, []).append(r)
    diffs = {g: config_diff(rs[0], record, covered) for g, rs in groups.items()}
    fitting = [rs for g, rs in groups.items() if not diffs[g]]
    if not fitting:
        closest = min(diffs.values(), key=len)
        return None, (f"{name} has no {scale} {kind} row measured with this configuration; "
                      f"differing keys: {'; '.join(closest)}")
    rec = _record_axes(record)
    same_weights = [rs for rs in fitting if rs[0].weights_dtype in (rec["weights_dtype"], ANY)]
    if not same_weights:
        stated = sorted({rs[0].weights_dtype for rs in fitting})
        return None, (f"{name}: the {scale} rows were measured with {'/'.join(stated)} weights; "
                      f"this record trained {rec['weights_dtype']} weights (precision "
                      f"{rec['precision']}); the two are never compared")

    def score(group: list[RefRow]) -> tuple[int, ...]:
        r = group[0]
        return (_axis(r.backend, rec["backend"]), _axis(r.precision, rec["precision"]),
                _axis(r.world_size, rec["world_size"]), _axis(r.mode, rec["mode"]),
                _axis(r.weights_dtype, rec["weights_dtype"]), int(r.device == rec["device"]))

    # Rows measured with the run's starting weights and schedule win; if none was, the
    # closest still matches, and the verdict says why its accuracy cannot judge the run.
    unlike = {id(rs): row_differences(rs[0].settings, record, rs[0].world_size)
              for rs in same_weights}
    alike = [rs for rs in same_weights if not unlike[id(rs)]] or same_weights
    best = max(alike, key=score)  # max keeps the first of equals: file order
    return Match(best, _reason(best[0], rec), unlike[id(best)]), ""


def find_match(record: Record, ref_dir: Path) -> tuple[Match | None, str]:
    """(the matched rows, "") or (None, why no row matches)."""
    workload = record.workload
    table = table_path(workload, ref_dir)
    rows = load_table(table) if table.exists() else []
    match, why = _match_in(record, rows, table.name)
    if match is not None:
        return match, ""
    for alias in load_aliases(ref_dir):
        if alias.workload != workload or any(record_setting(record, k) != v
                                             for k, v in alias.config.items()):
            continue
        other = table_path(alias.same_as, ref_dir)
        if not other.exists():
            continue
        match, _ = _match_in(record, load_table(other), other.name, frozenset(alias.config))
        if match is not None:
            match.reason += (f"; {workload} with {format_config(alias.config)} is "
                             f"{alias.same_as} ({ALIAS_FILE} line {alias.line})")
            return match, ""
    if not table.exists():
        return None, f"no reference table {table}"
    return None, why


def match_record(record: Record, rows: Sequence[RefRow]) -> Match | None:
    """The closest fitting row set among `rows` (no alias lookup), or None."""
    return _match_in(record, rows, "table")[0]


# ------------------------------------------------------------------------- comparing
@dataclasses.dataclass
class Verdict:
    metric: str
    measured: float | None
    row: RefRow
    status: str  # pass | FAIL | missing | skip | info | not comparable
    note: str = ""


def compare_value(measured: float, row: RefRow) -> bool:
    """Higher-is-better fails only below value - band; lower-is-better only above value + band."""
    if math.isnan(measured):
        return False
    band = row.band()
    if row.direction == "higher":
        return measured >= row.value - band
    return measured <= row.value + band


def _device_kind(name: str) -> str:
    low = name.lower()
    for word in ("nvidia", "tesla", "geforce", "huawei", "ascend", "habana", "intel"):
        low = low.replace(word, "")
    return re.sub(r"[^a-z0-9]", "", low)


def same_hardware(row: RefRow, record: Record) -> str:
    """"" when the row's speed/memory can judge the record, else why not."""
    rec = _record_axes(record)
    if row.backend != rec["backend"]:
        return f"other backend (row {row.backend}, record {rec['backend']})"
    kind_row, kind_rec = _device_kind(row.device), _device_kind(rec["device"])
    if row.device == "unstated" or not kind_row or not (kind_row in kind_rec
                                                        or kind_rec in kind_row):
        return f"other or unstated device (row {row.device}, record {rec['device']})"
    for axis in ("precision", "world_size", "mode"):
        if getattr(row, axis) not in (rec[axis], ANY):
            return f"other {axis} (row {getattr(row, axis)}, record {rec[axis]})"
    return ""


def compare(record: Record, match: Match, compare_anyway: bool = False) -> list[Verdict]:
    out: list[Verdict] = []
    unlike = "; ".join(match.not_comparable) if not compare_anyway else ""
    for row in match.rows:
        value, why = record_value(record, row.metric)
        if value is None:
            status = "skip" if "not meaningful" in why else "missing"
            out.append(Verdict(row.metric, None, row, status, why))
            continue
        other = same_hardware(row, record) if row.metric in PERF_METRICS else ""
        if unlike and row.metric not in PERF_METRICS:
            out.append(Verdict(row.metric, value, row, "not comparable", unlike))
        elif other:
            out.append(Verdict(row.metric, value, row, "info", f"{other}: for information"))
        else:
            ok = compare_value(value, row)
            out.append(Verdict(row.metric, value, row, "pass" if ok else "FAIL", why))
    return out


@dataclasses.dataclass
class CheckResult:
    record: Record
    table: Path
    match: Match | None
    verdicts: list[Verdict]
    passed: bool
    summary: str

    @property
    def not_comparable(self) -> bool:
        """Not judged: the run did not train as the rows assume (harness/comparable.py)."""
        return not self.passed and self.summary.startswith("not comparable")


def check_record(record: Record, ref_dir: Path, compare_anyway: bool = False) -> CheckResult:
    """Match and compare one record; never a pass without a matched, compared metric.
    A run that did not start or train as the matched rows assume is "not comparable" (not a
    pass) unless `compare_anyway`, which judges its metrics all the same."""
    table = table_path(record.workload, ref_dir)
    match, why = find_match(record, ref_dir)
    if match is None:
        return CheckResult(record, table, None, [], False, f"no matching row: {why}")
    unevaluated = record.no_evaluation()
    if unevaluated is not None:
        return CheckResult(record, table, match, [], False, unevaluated)
    verdicts = compare(record, match, compare_anyway)
    bad = [v.metric for v in verdicts if v.status in ("FAIL", "missing")]
    compared = [v for v in verdicts if v.status in ("pass", "FAIL")]
    if record.status != "ok":
        err = str(record.error or "").strip().splitlines()
        return CheckResult(record, table, match, verdicts, False,
                           f"run status is '{record.status}'"
                           + (f": {err[0]}" if err else ""))
    if bad:
        return CheckResult(record, table, match, verdicts, False, "failed: " + ", ".join(bad))
    if match.not_comparable and not compare_anyway:
        return CheckResult(record, table, match, verdicts, False,
                           "not comparable: " + "; ".join(match.not_comparable)
                           + " (accuracy not judged; --compare-anyway judges it all the same)")
    if not compared:
        return CheckResult(record, table, match, verdicts, False,
                           "no metric could be compared (all skipped or other hardware)")
    return CheckResult(record, table, match, verdicts, True, "pass")
