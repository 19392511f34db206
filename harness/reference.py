"""Reference tables (`reference_results/<workload>.csv`) and what a record says about itself.

Standard library only, and no workload or torch import, so `harness check` works on a core
install and survives a broken plugin. The matching and comparing live in harness/checking.py;
the schema is documented in reference_results/README.md.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable

from harness.errors import UsageError
from harness.records import Record, read_record

COLUMNS = ("scale", "kind", "config", "backend", "device", "precision", "weights_dtype", "mode",
           "world_size", "metric", "value", "tolerance", "tolerance_kind", "direction", "source")
ALIAS_FILE = "aliases.csv"
ALIAS_COLUMNS = ("workload", "config", "same_as", "note")
ANY = "any"  # a published row that does not state this axis
KINDS = ("train", "eval")
PRECISIONS = ("fp32", "bf16", "fp16", ANY)
MODES = ("eager", "lazy", "compile", ANY)
# Metrics that live outside record.metrics; rows may use either speed name.
SPEED_METRICS = ("fps", "samples_per_s")
MEMORY_METRIC = "peak_memory_bytes"
PERF_METRICS = (*SPEED_METRICS, MEMORY_METRIC)
KEY_AXES = ("backend", "device", "precision", "weights_dtype", "mode", "world_size")
# `--set` keys that change neither the model, the data nor the numbers: never configuration.
# --set keys that change no number a row holds, or (starting weights) that a row states as
# `init=` instead (harness/comparable.py).
NOT_CONFIG_KEYS = frozenset({"num_workers", "eval_batch_size", "backbone_weights",
                             "init_checkpoint"})


def canon(value: Any) -> str:
    """One spelling per value, so `(256, 704)`, `256,704` and [256, 704] compare equal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{float(value):.12g}"
    if isinstance(value, (list, tuple)):
        return ",".join(canon(v) for v in value)
    text = str(value).strip()
    if text[:1] in "([" and text[-1:] in ")]":
        text = text[1:-1]
    if "," in text:
        return ",".join(canon(t) for t in text.split(",") if t.strip())
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        return canon(float(text))
    except ValueError:
        return text


def parse_config(text: str) -> dict[str, str]:
    """`key=value;key=value` -> {key: canonical value}; raises ValueError naming the fault."""
    out: dict[str, str] = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"{item!r} is not key=value")
        if key.strip() in out:
            raise ValueError(f"key {key.strip()!r} given twice")
        out[key.strip()] = canon(value)
    return out


def format_config(config: dict[str, str]) -> str:
    """The inverse of parse_config; an empty tuple is spelled `()` (`key=` reads as a fault)."""
    return ";".join(f"{k}={v if v != '' else '()'}" for k, v in sorted(config.items()))


@dataclasses.dataclass(frozen=True)
class RefRow:
    scale: str
    kind: str  # train | eval
    config: str  # canonical key=value;... (format_config), "" = the preset's defaults
    backend: str
    device: str
    precision: str
    weights_dtype: str
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
    def settings(self) -> dict[str, str]:
        return parse_config(self.config)

    @property
    def group(self) -> tuple[str, ...]:
        return (self.kind, self.config, *(getattr(self, a) for a in KEY_AXES))

    def band(self) -> float:
        """The allowed distance from `value` in the metric's own unit."""
        return self.tolerance * abs(self.value) if self.tolerance_kind == "rel" else self.tolerance

    def as_csv(self) -> list[str]:
        return [self.scale, self.kind, self.config, self.backend, self.device, self.precision,
                self.weights_dtype, self.mode, self.world_size, self.metric, _fmt(self.value),
                _fmt(self.tolerance), self.tolerance_kind, self.direction, self.source]


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
    choices = {"kind": KINDS, "tolerance_kind": ("abs", "rel"), "direction": ("higher", "lower"),
               "precision": PRECISIONS, "weights_dtype": PRECISIONS, "mode": MODES}
    for col, allowed in choices.items():
        if vals[col] not in allowed:
            raise _bad(path, line, col, f"{vals[col]!r} is not one of {', '.join(allowed)}")
    ws = vals["world_size"]
    if ws != ANY and not (ws.isdigit() and int(ws) > 0):
        raise _bad(path, line, "world_size", f"{ws!r} is not a positive int or 'any'")
    try:
        config = format_config(parse_config(vals["config"]))
    except ValueError as exc:
        raise _bad(path, line, "config", f"{exc} (expected key=value;key=value)") from None
    return RefRow(vals["scale"], vals["kind"], config, vals["backend"], vals["device"] or "unstated",
                  vals["precision"], vals["weights_dtype"], vals["mode"], ws, vals["metric"],
                  numbers["value"], numbers["tolerance"], vals["tolerance_kind"],
                  vals["direction"], vals["source"], str(path), line)


def _read_csv(path: Path, columns: tuple[str, ...]) -> csv.DictReader:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no reference table {path}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(h.strip() for h in (reader.fieldnames or ()))
    if header != columns:
        missing = [c for c in columns if c not in header]
        extra = [c for c in header if c not in columns]
        moved = [c for c, h in zip(columns, header, strict=False) if c != h]
        col = (missing or extra or moved or ["?"])[0]
        why = ("missing" if missing else "unexpected" if extra else "out of order")
        raise _bad(path, 1, col, f"{why}; the header must be exactly: {','.join(columns)}")
    return reader


def load_table(path: Path) -> list[RefRow]:
    """Parse and validate one table; a malformed one raises UsageError naming line and column."""
    path = Path(path)
    reader = _read_csv(path, COLUMNS)
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


@dataclasses.dataclass(frozen=True)
class Alias:
    """`workload` run with `config` is the workload `same_as` at its defaults."""

    workload: str
    config: dict[str, str]
    same_as: str
    line: int


def load_aliases(ref_dir: Path) -> list[Alias]:
    path = Path(ref_dir) / ALIAS_FILE
    if not path.exists():
        return []
    reader = _read_csv(path, ALIAS_COLUMNS)
    out = []
    for raw in reader:
        vals = {k: (raw.get(k) or "").strip() for k in ALIAS_COLUMNS}
        for col in ("workload", "config", "same_as"):
            if not vals[col]:
                raise _bad(path, reader.line_num, col, "empty")
        try:
            config = parse_config(vals["config"])
        except ValueError as exc:
            raise _bad(path, reader.line_num, "config", str(exc)) from None
        out.append(Alias(vals["workload"], config, vals["same_as"], reader.line_num))
    return out


def reference_dir(explicit: Path | None = None) -> Path:
    """--reference-dir, else $HARNESS_REFERENCE_DIR, else ./reference_results, else the repo's."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("HARNESS_REFERENCE_DIR"):
        return Path(os.environ["HARNESS_REFERENCE_DIR"])
    local = Path("reference_results")
    return local if local.is_dir() else Path(__file__).resolve().parent.parent / "reference_results"


def table_path(workload: str, ref_dir: Path) -> Path:
    from harness.sources import file_name

    return Path(ref_dir) / f"{file_name(workload)}.csv"


def workload_tables(ref_dir: Path) -> list[Path]:
    """Every `<workload>.csv` (the alias and gate-threshold files are not tables)."""
    return sorted(p for p in Path(ref_dir).glob("*.csv")
                  if p.name not in (ALIAS_FILE, "gate_thresholds.csv"))


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


def load_records(paths: Iterable[Path]) -> list[Record]:
    return [read_record(p) for p in collect_record_paths(paths)]


def record_device(record: Record) -> str:
    return str(record.device_name or "unstated")


def record_kind(record: Record) -> str:
    return record.kind


def record_weights_dtype(record: Record) -> str:
    """Records from before the field existed were all fp32-weight runs."""
    return record.weights_dtype or "fp32"


def record_overrides(record: Record) -> dict[str, str]:
    """The run's `--set` overrides that are configuration (canonical values)."""
    out: dict[str, str] = {}
    for item in record.run_config().get("overrides") or []:
        key, _, value = str(item).partition("=")
        if key.strip().split(".")[0] not in NOT_CONFIG_KEYS:
            out[key.strip()] = canon(value)
    return out


_MISSING = object()


def record_setting(record: Record, key: str) -> str | None:
    """The run's resolved value of a (dotted) workload config key, else its override, else
    None when the record does not say."""
    node: Any = record.workload_config()
    for part in key.split("."):
        node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
    if node is not _MISSING:
        return canon(node)
    return record_overrides(record).get(key)



def record_value(record: Record, metric: str) -> tuple[float | None, str]:
    """(value, why-not) for a metric, speed or memory row; value None when not comparable."""
    if metric in SPEED_METRICS:
        tp = record.throughput
        if record.emulated or tp.get("meaningful") is False:
            return None, "speed not meaningful (emulated device)"
        v = tp.get("samples_per_s")
    elif metric == MEMORY_METRIC:
        mem = record.memory
        if record.emulated or mem.get("meaningful") is False:
            return None, "memory not meaningful (emulated device)"
        v = next((mem[k] for k in ("device_peak_allocated_bytes", "device_peak_reserved_bytes",
                                   "host_peak_rss_bytes") if mem.get(k) is not None), None)
    else:
        v = record.metrics.get(metric)
    if v is None:
        return None, "missing from the record"
    try:
        return float(v), ""
    except (TypeError, ValueError):
        return float("nan"), f"not a number: {v!r}"
