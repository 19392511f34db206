"""The trackers `harness run --track` sends a run to: TensorBoard and MLflow.

Each tracker is called from its own thread (harness/tracking.py) and may raise anything: the
caller turns the first failure into one warning and stops calling it. The vendor modules are
imported in `open()`, never at import time, so `harness --help` and `harness list` stay fast
and a missing package is a warning of the run, not an error of the harness.
"""
from __future__ import annotations

import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

INSTALL_HINT = "pip install 'perception-harness[track]'"
# MLflow retries a failing request 7 times with exponential backoff (minutes in all); a
# tracker must never hold the run's end that long. The user's own settings win.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
CONNECT_TIMEOUT_S = 3.0


class TrackerUnavailable(RuntimeError):
    """The tracker cannot start here (its package is missing, its server is unreachable)."""


@dataclass
class TrackContext:
    """What a tracker is told about the run when it opens."""

    out_dir: Path
    run_name: str
    experiment: str
    uri: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def finite(values: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite values (a NaN stays in the record; trackers reject or hide it)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def _import(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module
        raise TrackerUnavailable(f"{missing} is not installed ({INSTALL_HINT})") from exc


class Tracker:
    """The calls harness/tracking.py makes, in this order: open, then scalars/params/
    artifact any number of times, then close. `describe()` goes to the record."""

    name = ""

    def open(self, ctx: TrackContext) -> None:
        raise NotImplementedError

    def scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def params(self, params: dict[str, str]) -> None:
        raise NotImplementedError

    def artifact(self, path: Path) -> None:
        """A file of the run (record.json, the predictions); default: not copied."""

    def close(self, status: str) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}


class TensorBoardTracker(Tracker):
    """Event files in `<out>/tb/` (torch.utils.tensorboard, which needs `tensorboard`)."""

    name = "tensorboard"

    def __init__(self) -> None:
        self.writer: Any = None
        self.log_dir: Path | None = None

    def open(self, ctx: TrackContext) -> None:
        _import("tensorboard")
        writer_cls = _import("torch.utils.tensorboard").SummaryWriter
        self.log_dir = ctx.out_dir / "tb"
        self.writer = writer_cls(log_dir=str(self.log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def params(self, params: dict[str, str]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("run", f"| axis | value |\n|---|---|\n{rows}", 0)

    def close(self, status: str) -> None:
        self.writer.add_text("status", status, 0)
        self.writer.flush()
        self.writer.close()

    def describe(self) -> dict[str, Any]:
        return {"log_dir": "tb"}


def default_mlflow_uri(out_dir: Path) -> str:
    """A local store beside the run folders: `<runs>/mlflow.db` (MLflow 3 refuses a plain
    file store unless MLFLOW_ALLOW_FILE_STORE is set; sqlite needs no server)."""
    return f"sqlite:///{(out_dir.resolve().parent / 'mlflow.db').as_posix()}"


def _reachable(uri: str) -> None:
    """One quick TCP connect, so a dead server costs 3 s, not MLflow's retry schedule."""
    parts = urlsplit(uri)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise TrackerUnavailable(f"cannot reach the tracking server {host}:{port} "
                                 f"({exc.strerror or exc})") from None


_BAD_KEY = re.compile(r"[^\w\-. /:]")


class MLflowTracker(Tracker):
    """An MLflow run (experiment = the workload) on `--track-uri`, else a local sqlite store."""

    name = "mlflow"

    def __init__(self) -> None:
        self.client: Any = None
        self.entities: Any = None
        self.uri = ""
        self.experiment = ""
        self.run_id = ""

    def open(self, ctx: TrackContext) -> None:
        self.uri = ctx.uri or default_mlflow_uri(ctx.out_dir)
        if self.uri.startswith(("http://", "https://")):
            for key, value in MLFLOW_HTTP_DEFAULTS.items():
                os.environ.setdefault(key, value)
            _reachable(self.uri)
        client_cls = _import("mlflow.tracking").MlflowClient
        self.entities = _import("mlflow.entities")
        self.client = client_cls(tracking_uri=self.uri)
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or ctx.experiment
        experiment_id = self._experiment_id(ctx.out_dir)
        run = self.client.create_run(experiment_id, run_name=ctx.run_name, tags=ctx.tags)
        self.run_id = run.info.run_id

    def _experiment_id(self, out_dir: Path) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        local = self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri
        location = (out_dir.resolve().parent / "mlartifacts").as_uri() if local else None
        try:
            return str(self.client.create_experiment(self.experiment,
                                                     artifact_location=location))
        except Exception:  # noqa: BLE001 - another run created it meanwhile
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def scalars(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self.entities.Metric(_BAD_KEY.sub("_", k), v, now, step)
                   for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def params(self, params: dict[str, str]) -> None:
        entries = [self.entities.Param(_BAD_KEY.sub("_", k), str(v)[:6000])
                   for k, v in params.items()]
        self.client.log_batch(self.run_id, params=entries)

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_tag(self.run_id, "status", status)
        ended = {"ok": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, status=ended)

    def describe(self) -> dict[str, Any]:
        from harness.config import mask_password

        return {"tracking_uri": mask_password(self.uri), "experiment": self.experiment,
                "run_id": self.run_id}


TRACKERS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker,
                                      "mlflow": MLflowTracker}
