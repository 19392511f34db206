"""`harness run --track tensorboard,mlflow`: the run's scalars, axes and files sent to
experiment trackers (harness/trackers.py), from rank 0 only. A built-in observer plugin.

What goes out: at each log interval the loss terms, grad norm, lr, iter/data time and
samples/s (inside the timed window) as `train/...`; each evaluation's metrics as `eval/...`;
at the end the record's metrics (`final/...`), `throughput/...` and `memory/...`, its axes
as params (workload, scale, backend, mode, precision, strategy, world size, emulated, git
sha, host, device), record.json and the predictions file as artifacts. The record names
where each tracker put them (`record.tracking`).

A tracker never fails the run and never slows it: each runs its calls in order on its own
daemon thread (a step only queues values), and its first failure (package missing, server
down, disk full) is one warning on stderr, after which it is not called again. At the run's
end the trackers get HARNESS_TRACK_TIMEOUT seconds (default 30) to finish, then are left.
The record stays the source of truth.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness import hookimpl
from harness.errors import UsageError
from harness.trackers import TRACKERS, TrackContext, Tracker, TrackerUnavailable, finite

if TYPE_CHECKING:
    from harness.api import Run
    from harness.config import RunConfig
    from harness.records import Record

DEFAULT_TIMEOUT_S = 30.0
# Counters and bookkeeping of record.throughput: not worth a curve.
NOT_SCALARS = ("timed_steps", "warmup_steps", "optimizer_steps", "micro_steps", "total_steps",
               "grad_accum", "segments", "paused_s", "meaningful")
# The record's axes a tracker gets as params: (param name, how to read it).
AXES: tuple[tuple[str, Callable[[Record], Any]], ...] = (
    ("workload", lambda r: r.workload), ("scale", lambda r: r.scale),
    ("kind", lambda r: r.kind), ("backend", lambda r: r.backend), ("mode", lambda r: r.mode),
    ("precision", lambda r: r.precision), ("strategy", lambda r: r.strategy),
    ("world_size", lambda r: r.world_size), ("emulated", lambda r: r.emulated),
    ("seed", lambda r: r.seed), ("git_sha", lambda r: r.env.get("git_sha")),
    ("host", lambda r: r.env.get("host")), ("device", lambda r: r.device_name),
    ("torch", lambda r: r.env.get("torch")), ("status", lambda r: r.status),
)


def tracker_names(text: str | None) -> list[str]:
    """`tensorboard,mlflow` -> the names, checked (a typo is a usage error, exit 2)."""
    names = [n.strip().lower() for n in (text or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise UsageError(f"--track: unknown tracker {unknown[0]!r} (valid: "
                         f"{', '.join(TRACKERS)}; also HARNESS_TRACK)")
    return list(dict.fromkeys(names))


def warn(line: str) -> None:
    print(f"harness: warning: {line}", file=sys.stderr, flush=True)


class _Reached:
    """A mark in a channel's queue: set when the worker gets to it, failed or not."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> None:
        self.event.set()


class Channel:
    """One tracker's calls, run in order on a daemon thread; the first failure disables it
    with one warning (the calls still queued are dropped)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.error: str | None = None
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = \
            queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"harness-track-{tracker.name}")
        self._thread.start()

    def submit(self, call: Callable[..., Any], *args: Any) -> None:
        if self.error is None:
            self._queue.put((call, args))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            call, args = item
            if self.error is not None:
                if isinstance(call, _Reached):  # a wait() must not outlive a failure
                    call()
                continue
            try:
                call(*args)
            except BaseException as exc:  # noqa: BLE001 - a tracker never fails the run
                self.fail(str(exc) if isinstance(exc, TrackerUnavailable)
                          else f"{type(exc).__name__}: {exc}")

    def fail(self, why: str) -> None:
        if self.error is None:
            self.error = " ".join(why.split())[:300]
            warn(f"--track {self.tracker.name}: stopped tracking ({self.error}); the run and "
                 f"its record are not affected")

    def wait(self, deadline: float) -> bool:
        """Until the calls queued so far ran, or the deadline (time.monotonic()) passed."""
        done = _Reached()
        self.submit(done)
        if self.error is not None:
            return True
        finished = done.event.wait(max(0.0, deadline - time.monotonic()))
        if not finished:
            self.fail(f"still busy after the {timeout_s():.0f} s the run's end gives it "
                      f"(HARNESS_TRACK_TIMEOUT)")
        return finished

    def stop(self) -> None:
        self._queue.put(None)


def timeout_s() -> float:
    try:
        return float(os.environ.get("HARNESS_TRACK_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


class TrackingObserver:
    """The trackers of one run: what each hook sends them."""

    def __init__(self) -> None:
        self.channels: list[Channel] = []
        self.evals_sent = 0
        self.window: tuple[int, float] = (0, 0.0)  # timer samples and step seconds at the last row

    def start(self, run: Run) -> None:
        names = tracker_names(run.config.option("track"))
        self.channels, self.evals_sent, self.window = [], 0, (0, 0.0)
        if not names or not run.strategy.is_main:
            return
        ctx = TrackContext(
            out_dir=Path(run.out_dir), run_name=Path(run.out_dir).name,
            experiment=run.config.workload or "harness", uri=run.config.option("track_uri") or os.environ.get("MLFLOW_TRACKING_URI"),
            tags={"workload": str(run.config.workload), "scale": run.config.scale,
                  "backend": run.config.backend, "mode": run.backend.mode,
                  "precision": run.config.precision, "strategy": run.strategy.name,
                  "world_size": str(run.strategy.world_size),
                  "emulated": str(run.backend.emulated).lower()})
        for name in names:
            channel = Channel(TRACKERS[name]())
            channel.submit(channel.tracker.open, ctx)
            self.channels.append(channel)

    def send(self, values: dict[str, Any], step: int) -> None:
        clean = finite(values)
        if clean:
            for channel in self.channels:
                channel.submit(channel.tracker.scalars, clean, step)

    def step_end(self, run: Run, step: int) -> None:
        if not self.channels:
            return
        row = run.last_log
        if row is not None:
            values = {f"train/{k}": v for k, v in row.items() if k not in ("step", "epoch")}
            values.update(self._samples_per_s(run))
            self.send(values, step)
        self.send_evals(run)

    def _samples_per_s(self, run: Run) -> dict[str, float]:
        """Over the timed steps since the previous log row (none before the window opens)."""
        timer = run.timer
        if timer is None:
            return {}
        now = (timer.samples, sum(timer.step_times))
        samples, seconds = now[0] - self.window[0], now[1] - self.window[1]
        self.window = now
        if samples <= 0 or seconds <= 0:
            return {}
        return {"train/samples_per_s": samples * run.strategy.world_size / seconds}

    def send_evals(self, run: Run) -> None:
        for row in run.evals[self.evals_sent:]:
            self.send({f"eval/{k}": v for k, v in row.get("metrics", {}).items()},
                      int(row.get("step", run.step)))
        self.evals_sent = len(run.evals)

    def end(self, run: Run, record: Record) -> None:
        if not self.channels:
            return
        self.send_evals(run)
        final = {f"final/{k}": v for k, v in record.metrics.items()}
        final.update({f"throughput/{k}": v for k, v in record.throughput.items()
                      if k not in NOT_SCALARS})
        final.update({f"memory/{k}": v for k, v in record.memory.items()})
        self.send(final, run.step)
        for channel in self.channels:
            channel.submit(channel.tracker.params,
                           {name: str(get(record)) for name, get in AXES})
        deadline = time.monotonic() + timeout_s()
        for channel in self.channels:
            channel.wait(deadline)
        self._record(run, record)
        for path in self._artifacts(run, record):
            for channel in self.channels:
                channel.submit(channel.tracker.artifact, path)
        deadline = time.monotonic() + timeout_s()  # the files and the close: a budget of their own
        for channel in self.channels:
            channel.submit(channel.tracker.close, record.status)
            channel.wait(deadline)
            channel.stop()
        self.channels = []

    def _record(self, run: Run, record: Record) -> None:
        """Where each tracker put the run (or why it did not), in the record."""
        from harness.records import write_record

        record.tracking = {c.tracker.name: ({"error": c.error} if c.error is not None
                                            else c.tracker.describe()) for c in self.channels}
        try:
            write_record(run.record_path or Path(run.out_dir) / "record.json", record)
        except OSError as exc:
            warn(f"--track: record.json not rewritten with the tracking section ({exc})")

    @staticmethod
    def _artifacts(run: Run, record: Record) -> list[Path]:
        paths = [Path(run.record_path or Path(run.out_dir) / "record.json")]
        predictions = (record.predictions or {}).get("path")
        if predictions:
            path = Path(predictions)
            paths.append(path if path.is_absolute() else Path(run.out_dir) / path)
        return [p for p in paths if p.is_file()]


_OBSERVER = TrackingObserver()


@hookimpl
def harness_addoption(parser: Any) -> None:
    parser.add_argument("--track", default=os.environ.get("HARNESS_TRACK", ""),
                        metavar="tensorboard,mlflow",
                        help="also send the run to these trackers (rank 0; default "
                             "$HARNESS_TRACK): TensorBoard event files in <out>/tb, an MLflow "
                             "run; a failing tracker is a warning, never a failed run")
    parser.add_argument("--track-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        metavar="URI",
                        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else "
                             "sqlite:///<runs folder>/mlflow.db)")


@hookimpl
def harness_configure(config: RunConfig) -> None:
    tracker_names(config.option("track"))  # a typo fails before the run starts


def _guarded(call: Callable[..., None], *args: Any) -> None:
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001 - a tracker never fails the run
        warn(f"--track: {type(exc).__name__}: {exc} (the run goes on)")


@hookimpl
def harness_run_start(run: Run) -> None:
    _guarded(_OBSERVER.start, run)


@hookimpl
def harness_step_end(run: Run, step: int) -> None:
    if _OBSERVER.channels:
        _guarded(_OBSERVER.step_end, run, step)


@hookimpl
def harness_eval_end(run: Run, metrics: dict[str, float]) -> None:
    if _OBSERVER.channels:
        _guarded(_OBSERVER.send_evals, run)


@hookimpl(trylast=True)  # after --profile has added its section to the record
def harness_run_end(run: Run, record: Record) -> None:
    _guarded(_OBSERVER.end, run, record)
