"""Performance gating: is a candidate run slower (or hungrier) than its baseline runs?

Two conditions must both hold before a slowdown is called a regression:
- significance: a one-sided Mann-Whitney U test on per-step times (candidate slower), which
  needs no normality and tolerates the long right tail of step times on a busy host;
- effect size: the relative median slowdown exceeds a threshold (default 5%), because with
  hundreds of steps the U test alone flags differences far too small to matter.
Memory regresses when the candidate's peak exceeds the largest peak of its matching
baselines by more than a threshold. Thresholds per workload live in
`reference_results/gate_thresholds.csv`.

Baselines are pooled only with candidates measured the same way: same workload, scale, kind,
data source, batch size, gradient accumulation, precision and weights dtype, mode, backend,
device, world size and `--set` overrides (POOL_KEYS). Anything else would mix, say, a batch-16
baseline into a batch-8 candidate's null distribution, or judge its memory against a larger
configuration's peak.
"""
from __future__ import annotations

import csv
import dataclasses
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.errors import MissingExtra, UsageError
from harness.records import Record
from harness.reference import MEMORY_METRIC, record_value

THRESHOLD_COLUMNS = ("workload", "step_time_rel", "memory_rel", "alpha", "note")
MIN_STEPS = 8  # below this the U test cannot reach any useful significance
FAILING = ("REGRESSION", "no baseline", "failed run", "too few steps")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    step_time_rel: float = 0.05
    memory_rel: float = 0.10
    alpha: float = 0.05
    source: str = "built-in defaults"


def load_thresholds(path: Path | None, workload: str) -> Thresholds:
    """The workload's row, else the '*' row, else built-in defaults (blank cells = default).
    No path: the built-in defaults; a path that does not exist is an error."""
    if path is None:
        return Thresholds()
    if not Path(path).is_file():
        raise UsageError(f"thresholds file {path} not found (give an existing CSV with the "
                         f"header {','.join(THRESHOLD_COLUMNS)}, or leave --thresholds out)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != THRESHOLD_COLUMNS:
            raise UsageError(f"{path}: line 1: header must be exactly "
                             f"{','.join(THRESHOLD_COLUMNS)}")
        rows = {}
        for raw in reader:
            rows[(raw["workload"] or "").strip()] = (reader.line_num, raw)
    chosen = rows.get(workload) or rows.get("*")
    if chosen is None:
        return Thresholds()
    line, raw = chosen
    values: dict[str, float] = {}
    for col in ("step_time_rel", "memory_rel", "alpha"):
        text = (raw.get(col) or "").strip()
        if not text:
            continue
        try:
            values[col] = float(text)
        except ValueError:
            raise UsageError(f"{path}: line {line}, column '{col}': "
                             f"not a number: {text!r}") from None
        if values[col] < 0:
            raise UsageError(f"{path}: line {line}, column '{col}': must be >= 0")
    return dataclasses.replace(Thresholds(), **values,
                               source=f"{Path(path).name} row '{raw['workload']}'")


@dataclasses.dataclass
class GateResult:
    candidate: str
    key: str
    baselines: int = 0
    base_median_s: float | None = None
    cand_median_s: float | None = None
    slowdown: float | None = None
    p_value: float | None = None
    base_mem: float | None = None
    cand_mem: float | None = None
    mem_change: float | None = None
    time_verdict: str = ""
    mem_verdict: str = ""
    pooled: str = ""  # what the baselines were pooled on, and what was left out
    verdict: str = "ok"
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING


def _label(record: Record) -> str:
    path = record.path or Path("?")
    return path.parent.name if path.name == "record.json" else path.name


def _batch_size(record: Record) -> Any:
    return record.workload_config().get("batch_size") or record.run_config().get("batch_size")


# (label, getter): what a baseline must share with the candidate to be pooled with it.
POOL_KEYS: tuple[tuple[str, Callable[[Record], Any]], ...] = (
    ("workload", lambda r: r.workload),
    ("scale", lambda r: r.scale),
    ("kind", lambda r: r.kind),
    ("data source", lambda r: r.data_source),
    ("batch size", _batch_size),
    ("grad accum", lambda r: r.run_config().get("grad_accum") or 1),
    ("precision", lambda r: r.precision),
    ("weights dtype", lambda r: r.weights_dtype or "fp32"),
    ("mode", lambda r: r.mode),
    ("backend", lambda r: r.backend),
    ("device", lambda r: r.device_name),
    ("world size", lambda r: r.world_size or 1),
    ("overrides", lambda r: tuple(sorted(r.run_config().get("overrides") or ()))),
)


def _key(record: Record) -> tuple[Any, ...]:
    return tuple(get(record) for _, get in POOL_KEYS)


def _differences(base: Record, cand: Record) -> list[str]:
    return [label for label, get in POOL_KEYS if get(base) != get(cand)]


def _same_file(a: Record, b: Record) -> bool:
    return Path(str(a.path)).resolve() == Path(str(b.path)).resolve()


def _u_test(cand: Sequence[float], base: Sequence[float]) -> float:
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        raise MissingExtra("harness gate needs scipy: "
                           "pip install 'perception-harness[report]'") from None
    # alternative="greater": the candidate's step times are stochastically larger (slower).
    return float(mannwhitneyu(cand, base, alternative="greater").pvalue)


def _time_check(res: GateResult, cand: Record, bases: list[Record]) -> None:
    if cand.emulated or cand.throughput.get("meaningful") is False:
        res.time_verdict = "skip (emulated: speed not meaningful)"
        return
    c_times = list(cand.throughput.get("step_times_s") or [])
    # Pooled over baseline runs: more samples, and run-to-run spread widens the null.
    b_times = [t for b in bases for t in b.throughput.get("step_times_s") or []]
    if len(c_times) < MIN_STEPS or len(b_times) < MIN_STEPS:
        res.time_verdict = (f"too few timed steps (candidate {len(c_times)}, baseline "
                            f"{len(b_times)}; need {MIN_STEPS}+)")
        res.verdict = "too few steps"
        return
    res.base_median_s = statistics.median(b_times)
    res.cand_median_s = statistics.median(c_times)
    res.slowdown = res.cand_median_s / res.base_median_s - 1.0
    res.p_value = _u_test(c_times, b_times)
    thr = res.thresholds
    significant = res.p_value < thr.alpha
    large = res.slowdown > thr.step_time_rel
    if significant and large:
        res.time_verdict = (f"REGRESSION: median +{res.slowdown:.1%} > {thr.step_time_rel:.0%}, "
                            f"p={res.p_value:.2g} < {thr.alpha}")
        res.verdict = "REGRESSION"
    elif large:
        res.time_verdict = f"ok: +{res.slowdown:.1%} but not significant (p={res.p_value:.2g})"
    elif significant:
        res.time_verdict = (f"ok: significant but small "
                            f"(+{res.slowdown:.1%} <= {thr.step_time_rel:.0%})")
    else:
        res.time_verdict = f"ok ({res.slowdown:+.1%}, p={res.p_value:.2g})"


def _memory_check(res: GateResult, cand: Record, bases: list[Record]) -> None:
    c_mem, why = record_value(cand, MEMORY_METRIC)
    b_mems = [v for v, _ in (record_value(b, MEMORY_METRIC) for b in bases) if v is not None]
    if c_mem is None or not b_mems:
        res.mem_verdict = f"skip ({why or 'baseline has no memory figure'})"
        return
    # Against the largest peak of the matching baselines (same configuration, see POOL_KEYS):
    # allocator noise between identical runs is not a regression.
    res.base_mem, res.cand_mem = max(b_mems), c_mem
    res.mem_change = c_mem / res.base_mem - 1.0 if res.base_mem else 0.0
    if res.mem_change > res.thresholds.memory_rel:
        res.mem_verdict = f"REGRESSION: +{res.mem_change:.1%} > {res.thresholds.memory_rel:.0%}"
        res.verdict = "REGRESSION"
    else:
        res.mem_verdict = f"ok ({res.mem_change:+.1%})"


def gate(candidates: Sequence[Record], baselines: Sequence[Record],
         thresholds_path: Path | None = None, overrides: dict[str, float] | None = None,
         ) -> list[GateResult]:
    """Gate each candidate against the ok baseline runs with the same key (not itself)."""
    results = []
    for cand in candidates:
        key = _key(cand)
        thr = load_thresholds(thresholds_path, cand.workload)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if given:
            thr = dataclasses.replace(thr, **given, source=f"{thr.source} + command line")
        res = GateResult(_label(cand), f"{cand.workload}/{cand.scale}/"
                         f"{cand.backend}/{cand.mode}/{cand.precision}/"
                         f"ws{cand.world_size or 1}", thresholds=thr)
        results.append(res)
        if cand.status != "ok":
            res.verdict = "failed run"
            res.time_verdict = f"candidate status '{cand.status}'"
            continue
        others = [b for b in baselines if not _same_file(b, cand)]
        bases = [b for b in others if _key(b) == key and b.status == "ok"]
        res.baselines = len(bases)
        left_out: dict[str, int] = {}
        for b in others:
            if b.status != "ok":
                left_out[f"status {b.status}"] = left_out.get(f"status {b.status}", 0) + 1
            for label in _differences(b, cand):
                left_out[f"other {label}"] = left_out.get(f"other {label}", 0) + 1
        res.pooled = (f"pooled {len(bases)} of {len(others)} baseline run(s) with the same "
                      f"{', '.join(label for label, _ in POOL_KEYS)}"
                      + (f" (overrides: {' '.join(key[-1])})" if key[-1] else "")
                      + (f"; left out: {', '.join(f'{n}x {why}' for why, n in left_out.items())}"
                         if left_out else ""))
        if not bases:
            res.verdict = "no baseline"
            res.time_verdict = "no ok baseline run measured the same way"
            continue
        _time_check(res, cand, bases)
        _memory_check(res, cand, bases)
    return results


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.2f}"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


def render(results: Sequence[GateResult]) -> str:
    """A plain-text table (no tabulate dependency), then one line per verdict detail."""
    head = ("candidate", "key", "base runs", "base p50 ms", "cand p50 ms", "slowdown", "p",
            "base MiB", "cand MiB", "verdict")
    rows = [(r.candidate, r.key, str(r.baselines), _ms(r.base_median_s), _ms(r.cand_median_s),
             "-" if r.slowdown is None else f"{r.slowdown:+.1%}",
             "-" if r.p_value is None else f"{r.p_value:.2g}",
             _mib(r.base_mem), _mib(r.cand_mem), r.verdict) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
              for row in rows]
    lines.append("")
    for r in results:
        t = r.thresholds
        lines.append(f"{r.candidate}: time {r.time_verdict}; memory {r.mem_verdict or 'n/a'} "
                     f"[thresholds: step time +{t.step_time_rel:.0%}, memory +{t.memory_rel:.0%}, "
                     f"alpha {t.alpha} from {t.source}]")
        if r.pooled:
            lines.append(f"  {r.pooled}")
    return "\n".join(lines)
