"""`harness gate CANDIDATE --history DIR [--last N]`: the candidate against the last N
comparable runs of a history folder, with a tolerance from their spread.

Comparable is harness/gate.py's pooling key (same workload, scale, kind, data source, batch,
accumulation, precision, weights dtype, mode, backend, device, world size, overrides); the
baseline is the N most recent ok ones by `started_at` (the candidate itself and runs started
after it are not history). Judged per run, not per step:
- samples/s regresses when it is lower than the baselines' mean by more than
  max(3 x their standard deviation, the step-time threshold x the mean);
- peak memory regresses when it is higher than the baselines' largest peak by more than
  max(3 x their standard deviation, the memory threshold x that peak).
The thresholds are gate.py's (reference_results/gate_thresholds.csv, --time-threshold,
--memory-threshold): the floor that keeps identical baselines from a zero band.
"""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Callable, Sequence

from harness.gate import POOL_KEYS, Thresholds, _differences, _key, _label, _same_file
from harness.records import Record
from harness.reference import MEMORY_METRIC, record_value

DEFAULT_LAST = 5


@dataclasses.dataclass
class HistoryResult:
    candidate: str
    key: str
    compared: list[Record] = dataclasses.field(default_factory=list)
    base_fps: float | None = None
    fps_tolerance: float | None = None
    cand_fps: float | None = None
    base_mem: float | None = None
    mem_tolerance: float | None = None
    cand_mem: float | None = None
    fps_verdict: str = ""
    mem_verdict: str = ""
    left_out: str = ""
    verdict: str = "ok"
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)

    @property
    def failed(self) -> bool:
        from harness.gate import FAILING

        return self.verdict in FAILING


def _spread(values: list[float]) -> float:
    return 3 * statistics.stdev(values) if len(values) > 1 else 0.0


def _fps(res: HistoryResult, cand: Record) -> None:
    value, why = record_value(cand, "fps")
    base = [v for v, _ in (record_value(b, "fps") for b in res.compared) if v is not None]
    if value is None or not base:
        res.fps_verdict = f"skip ({why or 'the history has no samples/s'})"
        return
    mean = statistics.fmean(base)
    res.base_fps, res.cand_fps = mean, value
    res.fps_tolerance = max(_spread(base), res.thresholds.step_time_rel * mean)
    change = value / mean - 1.0 if mean else 0.0
    how = (f"{len(base)} runs, tolerance max(3 x std, {res.thresholds.step_time_rel:.0%})"
           if len(base) > 1 else f"1 run: no spread, tolerance "
                                 f"{res.thresholds.step_time_rel:.0%}")
    if value < mean - res.fps_tolerance:
        res.fps_verdict = (f"REGRESSION: {value:,.1f} samples/s, {change:+.1%} against "
                           f"{mean:,.1f} ± {res.fps_tolerance:,.1f} ({how})")
        res.verdict = "REGRESSION"
    else:
        res.fps_verdict = f"ok ({change:+.1%} against {mean:,.1f} ± {res.fps_tolerance:,.1f})"


def _memory(res: HistoryResult, cand: Record) -> None:
    value, why = record_value(cand, MEMORY_METRIC)
    base = [v for v, _ in (record_value(b, MEMORY_METRIC) for b in res.compared)
            if v is not None]
    if value is None or not base:
        res.mem_verdict = f"skip ({why or 'the history has no memory figure'})"
        return
    peak = max(base)
    res.base_mem, res.cand_mem = peak, value
    res.mem_tolerance = max(_spread(base), res.thresholds.memory_rel * peak)
    change = value / peak - 1.0 if peak else 0.0
    if value > peak + res.mem_tolerance:
        res.mem_verdict = f"REGRESSION: {change:+.1%} above the largest peak of the history"
        res.verdict = "REGRESSION"
    else:
        res.mem_verdict = f"ok ({change:+.1%})"


def _when(record: Record) -> str:
    return record.started_at or ""


def gate_history(candidates: Sequence[Record], history: Sequence[Record], last: int,
                 thresholds: Callable[[str], Thresholds]) -> list[HistoryResult]:
    """Each candidate against its last `last` comparable ok runs of `history`."""
    results = []
    for cand in candidates:
        res = HistoryResult(_label(cand), f"{cand.workload}/{cand.scale}/{cand.backend}/"
                            f"{cand.mode}/{cand.precision}/ws{cand.world_size or 1}",
                            thresholds=thresholds(cand.workload))
        results.append(res)
        if cand.status != "ok":
            res.verdict, res.fps_verdict = "failed run", f"candidate status '{cand.status}'"
            continue
        earlier = [r for r in history if not _same_file(r, cand)
                   and (not cand.started_at or _when(r) <= cand.started_at)]
        same = [r for r in earlier if r.status == "ok" and _key(r) == _key(cand)]
        res.compared = sorted(same, key=_when)[-last:] if last > 0 else []
        counts: dict[str, int] = {}
        for r in earlier:
            for label in (["status " + r.status] if r.status != "ok" else []) + [
                    f"other {d}" for d in _differences(r, cand)]:
                counts[label] = counts.get(label, 0) + 1
        res.left_out = ", ".join(f"{n}x {why}" for why, n in counts.items())
        if not res.compared:
            res.verdict = "no baseline"
            res.fps_verdict = (f"no comparable ok run in the history (same "
                               f"{', '.join(label for label, _ in POOL_KEYS)})")
            continue
        _fps(res, cand)
        _memory(res, cand)
    return results


def _describe(record: Record) -> str:
    path = record.path or Path("?")
    sha = str(record.env.get("git_sha") or "unknown commit")[:10]
    return f"{path} ({sha}, {record.started_at or 'no start time'})"


def render(results: Sequence[HistoryResult]) -> str:
    head = ("candidate", "key", "runs", "base samples/s", "cand samples/s", "base MiB",
            "cand MiB", "verdict")
    rows = [(r.candidate, r.key, str(len(r.compared)),
             "-" if r.base_fps is None else f"{r.base_fps:,.1f} ± {r.fps_tolerance:,.1f}",
             "-" if r.cand_fps is None else f"{r.cand_fps:,.1f}",
             "-" if r.base_mem is None else f"{r.base_mem / 2**20:,.0f}",
             "-" if r.cand_mem is None else f"{r.cand_mem / 2**20:,.0f}", r.verdict)
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    lines.append("")
    for r in results:
        t = r.thresholds
        lines.append(f"{r.candidate}: samples/s {r.fps_verdict}; memory {r.mem_verdict or 'n/a'}"
                     f" [floors: samples/s -{t.step_time_rel:.0%}, memory +{t.memory_rel:.0%} "
                     f"from {t.source}]")
        lines.append(f"  compared with the last {len(r.compared)} comparable run(s):")
        lines += [f"    {_describe(b)}" for b in r.compared]
        if r.left_out:
            lines.append(f"  left out of the history: {r.left_out}")
    return "\n".join(lines)
