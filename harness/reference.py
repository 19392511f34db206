"""Reference tables (`reference_results/<workload>.csv`): load, match a record, compare.

Standard library only, so `harness check` works on a core install (no pandas needed).
A record is matched on exact (workload, scale) first: published `full` numbers must never
judge a `smoke` run. Within that scale the closest row set by (backend, precision, world
size, mode) wins, and the reason says which axes differ, so a cross-hardware comparison
(an npu record against GPU_8p rows) is visible as such rather than silently "exact".
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.errors import UsageError
from harness.records import read_record

COLUMNS = ("scale", "backend", "device", "precision", "mode", "world_size", "metric", "value",
           "tolerance", "tolerance_kind", "direction", "source")
ANY = "any"  # a published row that does not state this axis
PRECISIONS = ("fp32", "bf16", "fp16", ANY)
MODES = ("eager", "lazy", "compile", ANY)
# Metrics that live outside record["metrics"]; rows may use either speed name.
SPEED_METRICS = ("fps", "samples_per_s")
MEMORY_METRIC = "peak_memory_bytes"
KEY_AXES = ("backend", "device", "precision", "mode", "world_size")


@dataclasses.dataclass(frozen=True)
class RefRow:
    scale: str
    backend: str
    device: str
    precision: str
    mode: str
    world_size: str  # digits or "any"
    metric: str
    value: float
    tolerance: float
    tolerance_kind: str  # abs | rel
    direction: str  # higher | lower
    source: str
    file: str = ""
    line: int = 0

    @property
    def group(self) -> tuple[str, ...]:
        return tuple(getattr(self, a) for a in KEY_AXES)

    def band(self) -> float:
        """The allowed distance from `value` in the metric's own unit."""
        return self.tolerance * abs(self.value) if self.tolerance_kind == "rel" else self.tolerance

    def as_csv(self) -> list[str]:
        return [self.scale, self.backend, self.device, self.precision, self.mode,
                self.world_size, self.metric, _fmt(self.value), _fmt(self.tolerance),
                self.tolerance_kind, self.direction, self.source]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) >= 1e6 else f"{x:.6g}"


def _bad(path: Path, line: int, column: str, msg: str) -> UsageError:
    return UsageError(f"{path}: line {line}, column '{column}': {msg}")


def _parse_row(path: Path, line: int, raw: dict[str, str]) -> RefRow:
    vals = {k: (raw.get(k) or "").strip() for k in COLUMNS}
    for col in ("scale", "backend", "metric", "source"):
        if not vals[col]:
            raise _bad(path, line, col, "empty")
    numbers: dict[str, float] = {}
    for col in ("value", "tolerance"):
        try:
            numbers[col] = float(vals[col])
        except ValueError:
            raise _bad(path, line, col, f"not a number: {vals[col]!r}") from None
        if not math.isfinite(numbers[col]):
            raise _bad(path, line, col, f"not finite: {vals[col]!r}")
    if numbers["tolerance"] < 0:
        raise _bad(path, line, "tolerance", "must be >= 0")
    choices = {"tolerance_kind": ("abs", "rel"), "direction": ("higher", "lower"),
               "precision": PRECISIONS, "mode": MODES}
    for col, allowed in choices.items():
        if vals[col] not in allowed:
            raise _bad(path, line, col, f"{vals[col]!r} is not one of {', '.join(allowed)}")
    ws = vals["world_size"]
    if ws != ANY and not (ws.isdigit() and int(ws) > 0):
        raise _bad(path, line, "world_size", f"{ws!r} is not a positive int or 'any'")
    return RefRow(vals["scale"], vals["backend"], vals["device"] or "unstated", vals["precision"],
                  vals["mode"], vals["world_size"], vals["metric"], numbers["value"],
                  numbers["tolerance"], vals["tolerance_kind"], vals["direction"], vals["source"],
                  str(path), line)


def load_table(path: Path) -> list[RefRow]:
    """Parse and validate one table; a malformed one raises UsageError naming line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no reference table {path}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(h.strip() for h in (reader.fieldnames or ()))
    if header != COLUMNS:
        missing = [c for c in COLUMNS if c not in header]
        extra = [c for c in header if c not in COLUMNS]
        moved = [c for c, h in zip(COLUMNS, header, strict=False) if c != h]
        col = (missing or extra or moved or ["?"])[0]
        why = ("missing" if missing else "unexpected" if extra else "out of order")
        raise _bad(path, 1, col, f"{why}; the header must be exactly: {','.join(COLUMNS)}")
    rows: list[RefRow] = []
    seen: dict[tuple[str, ...], int] = {}
    for raw in reader:
        line = reader.line_num
        if None in raw or any(v is None for v in raw.values()):
            raise _bad(path, line, "source", f"expected {len(COLUMNS)} fields")
        row = _parse_row(path, line, raw)
        key = (row.scale, *row.group, row.metric)
        if key in seen:  # two values for one metric under one key would make matching ambiguous
            raise _bad(path, line, "metric", f"duplicate of line {seen[key]} for {row.metric!r}")
        seen[key] = line
        rows.append(row)
    return rows


def reference_dir(explicit: Path | None = None) -> Path:
    """--reference-dir, else $HARNESS_REFERENCE_DIR, else ./reference_results, else the repo's."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("HARNESS_REFERENCE_DIR"):
        return Path(os.environ["HARNESS_REFERENCE_DIR"])
    local = Path("reference_results")
    return local if local.is_dir() else Path(__file__).resolve().parent.parent / "reference_results"


def table_path(workload: str, ref_dir: Path) -> Path:
    return Path(ref_dir) / f"{workload}.csv"


# ------------------------------------------------------------------------- records
def collect_record_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a run folder means its record.json; other folders are searched."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / "record.json").exists():
            hits = sorted(p.rglob("record.json"))
            if not hits:
                raise UsageError(f"no record.json under {p}")
            found.extend(hits)
        else:
            found.append(p / "record.json" if p.is_dir() else p)
    return found


def load_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    return [read_record(p) for p in collect_record_paths(paths)]


def record_device(record: dict[str, Any]) -> str:
    return str((record.get("env") or {}).get("device_name") or "unstated")


def record_value(record: dict[str, Any], metric: str) -> tuple[float | None, str]:
    """(value, why-not) for a metric, speed or memory row; value None when not comparable."""
    if metric in SPEED_METRICS:
        tp = record.get("throughput") or {}
        if record.get("emulated") or tp.get("meaningful") is False:
            return None, "speed not meaningful (emulated device)"
        v = tp.get("samples_per_s")
    elif metric == MEMORY_METRIC:
        mem = record.get("memory") or {}
        if record.get("emulated") or mem.get("meaningful") is False:
            return None, "memory not meaningful (emulated device)"
        v = next((mem[k] for k in ("device_peak_allocated_bytes", "device_peak_reserved_bytes",
                                   "host_peak_rss_bytes") if mem.get(k) is not None), None)
    else:
        v = (record.get("metrics") or {}).get(metric)
    if v is None:
        return None, "missing from the record"
    try:
        return float(v), ""
    except (TypeError, ValueError):
        return float("nan"), f"not a number: {v!r}"


# ------------------------------------------------------------------------- matching
@dataclasses.dataclass
class Match:
    rows: list[RefRow]
    reason: str

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
        return (f"{Path(r.file).name} lines {where}: {r.backend}/{r.device}/"
                f"{r.precision}/{r.mode}/{ws} — {self.reason}")


def _axis(row_value: str, record_value: str) -> int:
    return 2 if row_value == record_value else 1 if row_value == ANY else 0


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


def match_record(record: dict[str, Any], rows: Sequence[RefRow]) -> Match | None:
    """The closest row set of the record's scale, or None if the scale has no rows."""
    rec = {"backend": str(record.get("backend")), "precision": str(record.get("precision")),
           "mode": str(record.get("mode")), "world_size": str(record.get("world_size") or 1),
           "device": record_device(record)}
    same_scale = [r for r in rows if r.scale == record.get("scale")]
    if not same_scale:
        return None
    groups: dict[tuple[str, ...], list[RefRow]] = {}
    for r in same_scale:
        groups.setdefault(r.group, []).append(r)

    def score(group: list[RefRow]) -> tuple[int, ...]:
        r = group[0]
        return (_axis(r.backend, rec["backend"]), _axis(r.precision, rec["precision"]),
                _axis(r.world_size, rec["world_size"]), _axis(r.mode, rec["mode"]),
                int(r.device == rec["device"]))

    best = max(groups.values(), key=score)  # max keeps the first of equals: file order
    return Match(best, _reason(best[0], rec))


# ------------------------------------------------------------------------- comparing
@dataclasses.dataclass
class Verdict:
    metric: str
    measured: float | None
    row: RefRow
    status: str  # pass | FAIL | missing | skip
    note: str = ""


def compare_value(measured: float, row: RefRow) -> bool:
    """Higher-is-better fails only below value - band; lower-is-better only above value + band."""
    if math.isnan(measured):
        return False
    band = row.band()
    if row.direction == "higher":
        return measured >= row.value - band
    return measured <= row.value + band


def compare(record: dict[str, Any], match: Match) -> list[Verdict]:
    out: list[Verdict] = []
    for row in match.rows:
        value, why = record_value(record, row.metric)
        if value is None:
            status = "skip" if "not meaningful" in why else "missing"
            out.append(Verdict(row.metric, None, row, status, why))
        else:
            ok = compare_value(value, row)
            out.append(Verdict(row.metric, value, row, "pass" if ok else "FAIL", why))
    return out


@dataclasses.dataclass
class CheckResult:
    record: dict[str, Any]
    table: Path
    match: Match | None
    verdicts: list[Verdict]
    passed: bool
    summary: str


def check_record(record: dict[str, Any], ref_dir: Path) -> CheckResult:
    """Match and compare one record; never a pass without a matched, compared metric."""
    table = table_path(str(record.get("workload")), ref_dir)
    if not table.exists():
        return CheckResult(record, table, None, [], False, f"no reference table {table}")
    rows = load_table(table)
    match = match_record(record, rows)
    if match is None:
        scales = sorted({r.scale for r in rows})
        return CheckResult(record, table, None, [], False,
                           f"no matching row: {table.name} has no rows for scale "
                           f"'{record.get('scale')}' "
                           f"(scales present: {', '.join(scales) or 'none'})")
    verdicts = compare(record, match)
    bad = [v.metric for v in verdicts if v.status in ("FAIL", "missing")]
    compared = [v for v in verdicts if v.status in ("pass", "FAIL")]
    if record.get("status") != "ok":
        err = str(record.get("error") or "").strip().splitlines()
        return CheckResult(record, table, match, verdicts, False,
                           f"run status is '{record.get('status')}'"
                           + (f": {err[0]}" if err else ""))
    if bad:
        return CheckResult(record, table, match, verdicts, False, "failed: " + ", ".join(bad))
    if not compared:
        return CheckResult(record, table, match, verdicts, False,
                           "no metric could be compared (all skipped)")
    return CheckResult(record, table, match, verdicts, True, "pass")
