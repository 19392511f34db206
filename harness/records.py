"""The run record: the typed `Record`, its JSON form and validation, atomic JSON writing,
environment capture.

Every writer (run, eval) builds a `Record` and every reader (check, parity, gate, show,
resume, history) gets one from `read_record`; the JSON keys are spelled only here.
The nested sections (config, metrics, throughput, memory, env, ...) stay plain dicts:
they are open-ended per workload and backend, and their keys are documented in
docs/record.md.
"""
from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Iterator

from harness.atomic import atomic_write

SCHEMA = "perception-harness/run-record/2"
# Schema 1 (before the typed record): the same fields plus `data_source`, a copy of
# data.source; still read, and rewritten as schema 2 when a run resumes it.
SCHEMA_V1 = "perception-harness/run-record/1"
READABLE_SCHEMAS = (SCHEMA, SCHEMA_V1)
STATUSES = ("running", "ok", "failed", "diverged", "oom", "interrupted")
KINDS = ("train", "eval")


def _json_safe(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep the information as text
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return _json_safe(value.item())
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON through the one atomic writer (harness/atomic.py)."""
    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(_json_safe(data), fh, indent=2, sort_keys=False)
            fh.write("\n")

    atomic_write(Path(path), dump)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _empty_model() -> dict[str, Any]:
    return {"params": None, "train_flops_per_sample": None}


@dataclass
class Record:
    """One run's or evaluation's record.json, typed.

    Required: what ran (kind, workload, scale, backend, mode, precision). The optional
    sections at the end are written only when set (an eval's checkpoint, an OOM's figures,
    a resumed run's history, ...). Keys this version does not know (a newer writer's) are
    kept in `extra` and written back unchanged.
    """

    kind: str
    workload: str
    scale: str
    backend: str
    mode: str
    precision: str
    schema: str = SCHEMA
    config: dict[str, Any] = field(default_factory=lambda: {"run": {}, "workload": {}})
    weights_dtype: str = "fp32"
    strategy: str = "single"
    world_size: int = 1
    seed: int | None = None
    emulated: bool = False
    status: str = "running"
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    losses: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=_empty_model)
    predictions: dict[str, Any] | None = None
    fallback_ops: list[Any] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None  # {"source": ..., "from_data": {...}}
    started_at: str | None = field(default_factory=_now)
    duration_s: float | None = None
    # Optional sections, absent from the JSON while None.
    checkpoint: dict[str, Any] | None = None  # eval: the weights evaluated
    out_dir: str | None = None
    onnx: dict[str, Any] | None = None
    raw_output_agreement: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    oom: dict[str, Any] | None = None
    resumed_from: list[dict[str, Any]] | None = None
    later_errors: list[str] | None = None
    record_error: str | None = None
    metric_directions: dict[str, str] | None = None  # the workload's declaration
    primary_metric: str | None = None
    # The files the model started from (harness/start_weights.py): [] = random weights;
    # None = not recorded (records written before the field).
    start_weights: list[dict[str, Any]] | None = None
    schedule: dict[str, Any] | None = None  # what was trained, against the preset's plan
    ema: dict[str, Any] | None = None  # the metrics are the EMA weights' (harness/ema.py)
    # Where `--track` sent the run: tracker -> its location, or {"error": why it stopped}.
    tracking: dict[str, Any] | None = None
    # What a workload built from a user's file came from (Workload.source_info(): an
    # OpenMMLab config's path, hash, options, pretrained files, op implementations).
    workload_source: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Where it was read from (not serialised).
    path: Path | None = field(default=None, compare=False)

    _OPTIONAL: ClassVar[tuple[str, ...]] = (
        "checkpoint", "out_dir", "onnx", "raw_output_agreement", "profile", "oom",
        "resumed_from", "later_errors", "record_error", "metric_directions", "primary_metric",
        "start_weights", "schedule", "ema", "tracking", "workload_source")
    _NOT_SERIALISED: ClassVar[tuple[str, ...]] = ("extra", "path")
    # JSON type each field must have when read: (types, may be null).
    _TYPES: ClassVar[dict[str, tuple[tuple[type, ...], bool]]] = {
        "kind": ((str,), False), "workload": ((str,), False), "scale": ((str,), False),
        "backend": ((str,), False), "mode": ((str,), True), "precision": ((str,), False),
        "schema": ((str,), False), "config": ((dict,), False), "weights_dtype": ((str,), True),
        "strategy": ((str,), True), "world_size": ((int,), True), "seed": ((int,), True),
        "emulated": ((bool,), True), "status": ((str,), False), "error": ((str,), True),
        "metrics": ((dict,), True), "throughput": ((dict,), True), "memory": ((dict,), True),
        "losses": ((list,), True), "evals": ((list,), True), "model": ((dict,), True),
        "predictions": ((dict,), True), "fallback_ops": ((list,), True),
        "env": ((dict,), True), "data": ((dict,), True), "started_at": ((str,), True),
        "duration_s": ((int, float), True), "checkpoint": ((dict,), True),
        "out_dir": ((str,), True), "onnx": ((dict,), True),
        "raw_output_agreement": ((dict,), True), "profile": ((dict,), True),
        "oom": ((dict,), True), "resumed_from": ((list,), True),
        "later_errors": ((list,), True), "record_error": ((str,), True),
        "metric_directions": ((dict,), True), "primary_metric": ((str,), True),
        "start_weights": ((list,), True), "schedule": ((dict,), True), "ema": ((dict,), True),
        "workload_source": ((dict,), True),
        "tracking": ((dict,), True),
    }

    @property
    def data_source(self) -> str | None:
        return (self.data or {}).get("source")

    @property
    def device_name(self) -> str | None:
        return self.env.get("device_name")

    def run_config(self) -> dict[str, Any]:
        """The run options as recorded (config.run)."""
        return dict(self.config.get("run") or {})

    def workload_config(self) -> dict[str, Any]:
        return dict(self.config.get("workload") or {})

    def init(self) -> str:
        """What the run started from, as reference rows state it (`init=`): `checkpoint` (a
        whole model), `backbone` (a pretrained backbone, the rest random) or `random`.
        Records from before `start_weights` say it through their config's fields."""
        if self.start_weights is not None:
            parts = {str(e.get("part")) for e in self.start_weights if isinstance(e, dict)}
        else:
            wcfg = self.workload_config()
            parts = ({"model"} if wcfg.get("init_checkpoint") else set()) | (
                {"backbone"} if wcfg.get("backbone_weights") else set())
        return "checkpoint" if "model" in parts else "backbone" if "backbone" in parts \
            else "random"

    def resumed_changes(self) -> str | None:
        """The optimizer/schedule fields changed on resume (`--resume DIR --set lr=...`) as
        one phrase, `lr 0.1 -> 0.01 at step 10`, or None when the run kept its recipe."""
        parts = [f"{field} {old} -> {new} at step {entry.get('step')}"
                 for entry in self.resumed_from or () if isinstance(entry, dict)
                 for field, (old, new) in sorted((entry.get("changed") or {}).items())]
        return "; ".join(parts) or None

    def no_evaluation(self) -> str | None:
        """For a training run started with --no-eval, the phrase saying so and the command
        that scores its weights (`check` and `show` both answer with it); else None."""
        if self.kind != "train" or self.metrics or self.run_config().get("eval") is not False:
            return None
        out = self.run_config().get("out") or (self.path.parent if self.path else None)
        checkpoint = Path(out) / "checkpoint.pt" if out else "CHECKPOINT"
        return (f"the run has no evaluation (--no-eval); score its weights with "
                f"`harness eval {self.workload} --checkpoint {checkpoint}`")

    def add_later_error(self, line: str) -> None:
        self.later_errors = [*(self.later_errors or []), line]

    def to_json(self) -> dict[str, Any]:
        """The record as written to record.json (JSON-safe: NaN/Inf become text)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in self._NOT_SERIALISED:
                continue
            value = getattr(self, f.name)
            if f.name in self._OPTIONAL and value is None:
                continue
            out[f.name] = value
        # Readers of schema 1 (older harness versions, users' scripts) read this key.
        out["data_source"] = self.data_source
        out.update(self.extra)
        return _json_safe(out)

    @classmethod
    def from_json(cls, data: Any, where: str = "record") -> Record:
        """Validate a record.json's content; one UsageError line names what is wrong."""
        from harness.errors import UsageError

        if not isinstance(data, dict):
            raise UsageError(f"{where}: not a run record (a JSON {type(data).__name__}, "
                             f"expected an object)")
        schema = data.get("schema")
        if schema not in READABLE_SCHEMAS:
            raise UsageError(f"{where}: field 'schema' is {schema!r}, expected "
                             f"{SCHEMA!r} (or {SCHEMA_V1!r})")
        known = {f.name for f in fields(cls)} - set(cls._NOT_SERIALISED)
        values: dict[str, Any] = {}
        for name in known:
            if name not in data:
                continue
            value = data[name]
            types, nullable = cls._TYPES[name]
            ok = (value is None and nullable) or (
                isinstance(value, types) and not (isinstance(value, bool) and bool not in types))
            if not ok:
                raise UsageError(f"{where}: field {name!r} is {value!r:.60}, expected "
                                 f"{' or '.join(t.__name__ for t in types)}")
            values[name] = value
        missing = [n for n in ("workload", "scale", "backend", "precision", "status")
                   if n not in values]
        if missing:
            raise UsageError(f"{where}: not a run record: no field {missing[0]!r}")
        values.setdefault("kind", "train")  # schema-1 training records may lack it
        values.setdefault("mode", "")
        if values["status"] not in STATUSES:
            raise UsageError(f"{where}: field 'status' is {values['status']!r}, expected one "
                             f"of {', '.join(STATUSES)}")
        if values.get("data") is None and isinstance(data.get("data_source"), str):
            values["data"] = {"source": data["data_source"], "from_data": {}}
        for name, empty in (("metrics", {}), ("throughput", {}), ("memory", {}), ("losses", []),
                            ("evals", []), ("fallback_ops", []), ("env", {})):
            if values.get(name) is None:
                values[name] = type(empty)()
        if values.get("model") is None:
            values["model"] = _empty_model()
        values["config"] = {"run": {}, "workload": {}, **(values.get("config") or {})}
        extra = {k: v for k, v in data.items()
                 if k not in known and k not in ("data_source", "_path")}
        return cls(**values, extra=extra)

    # Read-only mapping access, for observer plugins written against the schema-1 dict
    # (`record["status"]`); the harness itself reads attributes.
    def __getitem__(self, key: str) -> Any:
        data = self.to_json()
        if key not in data:
            raise KeyError(key)
        return data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())


def read_record(path: Path) -> Record:
    """The record at `path` (a run folder or its record.json); one UsageError line for a
    missing, unreadable or malformed file."""
    from harness.errors import UsageError

    path = Path(path)
    if path.is_dir():
        path = path / "record.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no run record at {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: a folder, not a run record") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not a run record (not UTF-8 text: {exc.reason} at byte "
                         f"{exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    record = Record.from_json(data, str(path))
    record.path = path
    return record


def write_record(path: Path, record: Record) -> None:
    write_json_atomic(path, record.to_json())


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        sha = out.stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(backend_env: dict[str, Any]) -> dict[str, Any]:
    import torch  # here, not at module level: report verbs read records without torch

    from harness import __version__

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        # The CPU kernels ATen dispatched to (default/avx2/avx512; ATEN_CPU_CAPABILITY can
        # lower it): the same seed trains differently on another path, so rows name it.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "harness": __version__,
        "git_sha": git_sha(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": sys.argv,
    }
    env.update(backend_env)
    return env
