"""Parity tables across runs of one workload and scale: metrics as rows, one column per run.

The first record is the baseline. Above the metrics, rows say what each run was (backend,
device, precision, steps, seed, timed steps, status); below, each metric has the runs' values,
then per other run its delta to the baseline and a verdict. A metric's tolerance comes from
the reference row matched to the baseline (harness/checking.py), else a default; relative
tolerances (speed, memory) get relative deltas. Directions: harness/directions.py.
Standard library only (no pandas, no torch); the figure is harness/parity_figure.py.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

from harness.comparable import run_differences
from harness.directions import headline_order, metric_directions
from harness.errors import UsageError
from harness.gate import MIN_STEPS
from harness.records import Record
from harness.reference import MEMORY_METRIC, RefRow, record_value

DEFAULT_REL_TOL = {"metric": 0.02, "fps": 0.10, MEMORY_METRIC: 0.10}
# Metrics near zero (an error rate of 0) would get a zero band from a relative rule alone.
DEFAULT_ABS_FLOOR = 1e-3
PERF = ("fps", MEMORY_METRIC)
SHOWN = {MEMORY_METRIC: "peak_memory_MiB"}
UNIT = {MEMORY_METRIC: 2**-20}
FORMATS = {"markdown": "markdown", "md": "markdown", "csv": "csv", "html": "html"}


@dataclasses.dataclass
class Tolerance:
    band: float | None  # absolute band, or None when relative
    rel: float | None
    floor: float
    direction: str  # higher | lower | ""
    source: str
    relative: bool = False  # deltas shown relative (speed, memory, rows with rel tolerance)

    def width(self, base: float) -> float:
        return self.band if self.band is not None else max((self.rel or 0.0) * abs(base),
                                                            self.floor)


@dataclasses.dataclass
class Parity:
    title: str
    labels: list[str]
    records: list[Record]
    header: list[str]
    rows: list[list[str]]  # run rows, then metric rows; cells already formatted
    run_rows: int  # how many of `rows` describe the runs
    verdicts: list[str]  # every verdict cell, for the exit code
    tolerances: list[list[str]]
    warnings: list[str]
    metrics: list[str]  # metric names in row order (primary first)
    tol: dict[str, Tolerance]

    @property
    def worse(self) -> bool:
        return "WORSE" in self.verdicts


def labels_for(records: Sequence[Record]) -> list[str]:
    """Short, unique: the run folder's name when short, else backend-precision."""
    out: list[str] = []
    for rec in records:
        p = rec.path or Path("run")
        name = p.parent.name if p.name == "record.json" else p.stem
        if len(name) > 14:
            name = f"{rec.backend}-{rec.precision}"
        base, n = name, 2
        while name in out:
            name, n = f"{base}#{n}", n + 1
        out.append(name)
    return out


def timed_steps(record: Record) -> int:
    tp = record.throughput
    return int(tp.get("timed_steps") or len(tp.get("step_times_s") or []))


def _tolerances(names: Sequence[str], rows: dict[str, RefRow],
                directions: dict[str, tuple[str, str]]) -> dict[str, Tolerance]:
    out: dict[str, Tolerance] = {}
    for name in names:
        row = rows.get(name) or (rows.get("samples_per_s") if name == "fps" else None)
        direction = directions.get(name, ("", ""))[0]
        if row is not None:
            absolute = row.tolerance_kind == "abs"
            out[name] = Tolerance(row.tolerance if absolute else None,
                                  None if absolute else row.tolerance, 0.0,
                                  direction or row.direction,
                                  f"reference {Path(row.file).name}:{row.line} "
                                  f"({row.tolerance_kind} {row.tolerance:g}; {row.source})",
                                  relative=not absolute)
            continue
        rel = DEFAULT_REL_TOL.get(name, DEFAULT_REL_TOL["metric"])
        floor = 0.0 if name in PERF else DEFAULT_ABS_FLOOR
        out[name] = Tolerance(None, rel, floor, direction,
                              f"default: {rel:.0%} of the baseline value"
                              + (f" (at least {floor:g})" if floor else ""),
                              relative=name in PERF)
    return out


def _fmt(value: float | None, scale: float = 1.0) -> str:
    if value is None or math.isnan(value):
        return "-"
    v = value * scale
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _judge(name: str, value: float | None, base: float | None, tol: Tolerance,
           rec: Record, base_rec: Record) -> tuple[str, str]:
    """(delta cell, verdict)."""
    if name in PERF and (rec.emulated or base_rec.emulated):
        return "-", "n/a (emulated)"
    if value is None or base is None or math.isnan(value) or math.isnan(base):
        return "-", "n/a"
    delta = value - base
    if tol.relative:
        shown = f"{delta / abs(base):+.1%}" if base else "-"
    else:
        shown = f"{delta * UNIT.get(name, 1.0):+.4g}"
    if name in PERF and min(timed_steps(rec), timed_steps(base_rec)) < MIN_STEPS:
        return shown, "n/a (too few timed steps)"
    if abs(delta) <= tol.width(base):
        return shown, "ok"
    if not tol.direction:
        return shown, "DIFFERS"
    better = delta > 0 if tol.direction == "higher" else delta < 0
    return shown, "better" if better else "WORSE"


def _run_rows(records: Sequence[Record]) -> list[tuple[str, list[str]]]:
    def steps(r: Record) -> str:
        got = r.throughput.get("optimizer_steps") or r.run_config().get("steps")
        return "-" if got is None else str(got)

    fields = [("backend", lambda r: r.backend),
              ("device", lambda r: str(r.device_name or "-")),
              ("precision", lambda r: f"{r.precision} (weights {r.weights_dtype or 'fp32'})"),
              ("mode / world size", lambda r: f"{r.mode} / {r.world_size or 1}"),
              ("steps", steps), ("start", lambda r: r.init() if r.kind == "train" else "-"),
              ("seed", lambda r: "-" if r.seed is None else str(r.seed)),
              ("timed steps", lambda r: str(timed_steps(r))),
              ("emulated", lambda r: "yes" if r.emulated else "no"),
              ("status", lambda r: r.status)]
    return [(name, [get(r) for r in records]) for name, get in fields]


def rename_metrics(records: Sequence[Record], pairs: Sequence[str]) -> list[Record]:
    """`--metric-map NAME=AS`: metric NAME of every record that has it read as AS (its
    direction and primary-metric role go with it), so one model's runs under two
    implementations, which name the same official figure differently, share a row."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, alias = (part.strip() for part in pair.partition("="))
        if not sep or not name or not alias:
            raise UsageError(f"--metric-map expects NAME=AS, got {pair!r}")
        mapping[name] = alias
    if not mapping:
        return list(records)
    out = []
    for r in records:
        r = dataclasses.replace(r, metrics={mapping.get(k, k): v for k, v in r.metrics.items()})
        if r.metric_directions:
            r.metric_directions = {mapping.get(k, k): v for k, v in r.metric_directions.items()}
        if r.primary_metric:
            r.primary_metric = mapping.get(r.primary_metric, r.primary_metric)
        out.append(r)
    return out


def build(records: Sequence[Record], ref_dir: Path | None = None,
          metrics: Sequence[str] | None = None, compare_anyway: bool = False,
          across_workloads: bool = False) -> Parity:
    """The parity table of `records` against the first. Accuracy of a run that started from
    other weights or trained another schedule than the baseline is "not comparable" (speed
    and memory are still compared) unless `compare_anyway`."""
    if not records:
        raise UsageError("harness parity needs at least one record")
    kinds = {(r.workload, r.scale) for r in records}
    if len(kinds) > 1 and not across_workloads:
        listed = ", ".join(f"{w}/{s}" for w, s in sorted(kinds, key=str))
        raise UsageError(f"parity compares runs of one workload and scale; got {listed} "
                         f"(--across-workloads puts two implementations side by side)")
    if len({r.kind for r in records}) > 1:  # training vs inference speed
        raise UsageError("parity compares runs of one kind; got train and eval records")
    base = records[0]
    matched: dict[str, RefRow] = {}
    if ref_dir is not None:
        from harness.checking import find_match

        match, _ = find_match(base, ref_dir)
        matched = {r.metric: r for r in (match.rows if match else [])}
    names = [*headline_order(records, matched.values()), *PERF]
    if metrics:
        aliases = {"samples_per_s": "fps", "peak_memory_MiB": MEMORY_METRIC, "memory": MEMORY_METRIC}
        wanted = [aliases.get(m, m) for m in metrics]
        unknown = [m for m in wanted if m not in names]
        if unknown:
            raise UsageError(f"--metrics: {', '.join(unknown)} not in these records "
                             f"(available: {', '.join(names)})")
        names = wanted
    directions = metric_directions(records, matched.values(), names)
    tols = _tolerances(names, matched, directions)
    labels = labels_for(records)
    others = labels[1:]
    header = ["metric", "better", *labels]
    for lab in others:
        header += [f"Δ {lab}", f"verdict {lab}"]
    rows: list[list[str]] = []
    pad = [""] * (2 * len(others))
    run_rows = _run_rows(records)
    for name, cells in run_rows:
        rows.append([name, "", *cells, *pad])
    verdicts: list[str] = []
    unlike = [[] if compare_anyway else run_differences(base, r) for r in records[1:]]
    for name in names:
        values = [record_value(r, name)[0] for r in records]
        scale = UNIT.get(name, 1.0)
        row = [SHOWN.get(name, name), tols[name].direction or "?",
               *(_fmt(v, scale) for v in values)]
        for rec, value, why in zip(records[1:], values[1:], unlike, strict=True):
            delta, verdict = _judge(name, value, values[0], tols[name], rec, base)
            if why and name not in PERF:
                verdict = "not comparable"
            row += [delta, verdict]
            verdicts.append(verdict)
        rows.append(row)
    warnings = [f"{lab}: {timed_steps(r)} timed steps (< {MIN_STEPS}); its speed and memory "
                f"are not compared" for lab, r in zip(labels, records, strict=True)
                if timed_steps(r) < MIN_STEPS and not r.emulated]
    warnings += [f"{lab}: status {r.status}" for lab, r in zip(labels, records, strict=True)
                 if r.status != "ok"]
    warnings += [f"{lab}: accuracy not comparable with {labels[0]} ({'; '.join(why)}); "
                 f"--compare-anyway judges it all the same"
                 for lab, why in zip(others, unlike, strict=True) if why]
    unknown_dir = [n for n in names if not tols[n].direction]
    if unknown_dir:
        warnings.append(f"no known direction for {', '.join(unknown_dir)}: a difference "
                        f"beyond tolerance reads DIFFERS")
    tol_rows = [[SHOWN.get(n, n), t.direction or "?",
                 f"±{t.band:g}" if t.band is not None else f"±{t.rel:.0%}",
                 f"{t.source}; direction from {directions.get(n, ('', 'default'))[1]}"]
                for n, t in tols.items()]
    shown = " vs ".join(dict.fromkeys(f"{r.workload} ({r.scale})" for r in records))
    title = f"Parity: {shown}, baseline {labels[0]}"
    return Parity(title, labels, list(records), header, rows, len(run_rows), verdicts, tol_rows,
                  list(dict.fromkeys(warnings)), list(names), tols)  # each warning once
