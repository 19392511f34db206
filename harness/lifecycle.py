"""One job lifecycle for `harness run` and `harness eval` (and any later job).

A job claims its folder (the caller, who knows its refusal rules), then `Job`:
writes the running record (and refuses to start when nothing can be recorded), turns
SIGTERM into an interruption and, for training, makes the first Ctrl-C or SIGTERM finish the step,
runs the phases, and whatever happens fills in the record, writes it (to a fallback path
when the folder cannot take it), runs each teardown step guarded on its own, releases the
folder and raises the first error with the record's path attached. One status mapping:
ok, failed, diverged, oom (with its hint), interrupted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from harness.errors import Diverged, HarnessError, RunInterrupted, worker_error_origin
from harness.oom import OutOfMemory
from harness.outdir import RecordNotWritten, RecordWriter, RunFolder
from harness.records import Record

Step = Callable[[], Any]


def is_oom(exc: BaseException) -> bool:
    """The device's OOM error, or the CPU allocator's ("DefaultCPUAllocator: can't allocate
    memory"), which torch raises as a plain RuntimeError."""
    text = str(exc).lower()
    oom_type = type(exc).__name__ == "OutOfMemoryError"  # torch.OutOfMemoryError, no import
    return oom_type or "out of memory" in text or "can't allocate memory" in text


def status_for(exc: BaseException) -> str:
    if isinstance(exc, Diverged):
        return "diverged"
    if isinstance(exc, (KeyboardInterrupt, RunInterrupted)):
        return "interrupted"
    if is_oom(exc):
        return "oom"
    return "failed"


def describe(exc: BaseException) -> str:
    """The record's error text: our own errors as their line, others with the last frames."""
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(exc, HarnessError):
        return detail
    return detail + "\n" + "".join(traceback.format_tb(exc.__traceback__)[-3:])


def backend_memory(backend: Any, window: Any = None) -> dict[str, Any]:
    """The timed window's memory peaks (or the backend's now), never fatal."""
    try:
        memory: dict[str, Any] = dataclasses.asdict(window or backend.memory())
    except Exception as exc:  # noqa: BLE001 - memory is reported, never fatal
        memory = {"error": repr(exc)}
    if backend.emulated:
        memory["meaningful"] = False
    return memory


def fallback_ops(backend: Any) -> list[Any]:
    try:
        return list(backend.fallback_report())
    except Exception:  # noqa: BLE001 - a report, never fatal
        return []


class Ending:
    """The job's first error and the record's status; later errors are listed apart."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self.first: BaseException | None = None

    def fail(self, exc: BaseException, where: str = "") -> None:
        if self.first is None:
            self.first = exc
            self.record.status = status_for(exc)
            self.record.error = (f"{where}: " if where else "") + describe(exc)
        else:
            self.record.add_later_error(f"{where}: {type(exc).__name__}: {exc}"[:500])

    def guard(self, where: str, step: Step) -> None:
        try:
            step()
        except BaseException as exc:  # noqa: BLE001 - the next finishing step still runs
            self.fail(exc, where)


SIGNAL_STOP = "received signal"  # how the line of a run a signal stopped at once starts


@contextmanager
def signals_finish_the_step(progress: dict[str, Any], enabled: bool) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM (a scheduler's preemption, a CI cancel, the launcher passing
    either on to every rank) during training: finish the step, write a checkpoint and the
    record (status interrupted, resumable). A second signal, or one outside the training loop
    (or where `enabled` is false: eval): stop at once, still with a record. Under --nproc every
    worker gets the signal from the launcher, maybe in different steps: the loop's
    `strategy.any_rank` makes all of them stop after the same one."""
    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if enabled and progress.get("training") and not progress.get("stop_requested"):
            progress["stop_requested"] = name  # the loop's stop line names it
            again = "Ctrl-C" if signum == signal.SIGINT else name
            print(f"\n[harness] {name}: finishing step {progress.get('step')}, then writing "
                  f"a checkpoint ({again} again to stop at once)", file=sys.stderr, flush=True)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise RunInterrupted(f"{SIGNAL_STOP} {name}")

    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            # SIGINT is left to Python's KeyboardInterrupt where the step need not finish.
            if sig == signal.SIGTERM or enabled:
                previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


class Job:
    """A claimed folder, its record and writer, from the running record to the last line.

    `progress` is shared with the phases: `phase` names where a failure happened
    ("evaluation" prefixes the error), `training`/`stop_requested`/`step` drive Ctrl-C.
    """

    def __init__(self, record: Record, writer: RecordWriter, folder: RunFolder,
                 started: float | None = None) -> None:
        self.record = record
        self.writer = writer
        self.folder = folder
        self.started = time.time() if started is None else started
        self.progress: dict[str, Any] = {}
        self.ending = Ending(record)

    @property
    def record_path(self) -> Any:
        """Where record.json went (the fallback when the folder could not take it)."""
        return self.writer.fallback or self.writer.path

    def start(self) -> None:
        """Write the running record; nothing recordable (disk full, read-only): do not
        start, and release the folder."""
        try:
            self.writer.write(self.record)
            if self.writer.fallback is not None:
                self.record.status = "failed"
                self.record.error = f"writing the record: {self.writer.failure}"
                self.writer.write(self.record)
                raise RecordNotWritten(self.writer.line())
        except BaseException:
            self.folder.release()
            raise

    def run(self, phases: Step, *, finish: Step, teardown: Sequence[tuple[str, Step]],
            on_oom: Step | None = None, ctrl_c_finishes_step: bool = False) -> Record:
        """Run `phases`; then, whatever happened: `finish` fills in what was measured, the
        record is written, each `teardown` step runs guarded; the first error is raised."""
        record, ending = self.record, self.ending
        with signals_finish_the_step(self.progress, ctrl_c_finishes_step):
            try:
                phases()
                record.status = "ok"
            except BaseException as exc:  # noqa: BLE001 - every ending gets a record
                # A worker's error as the main's one line; the record says if evaluation failed.
                ending.fail(worker_error_origin(exc),
                            "evaluation" if self.progress.get("phase") == "evaluation" else "")
                if record.status == "oom" and on_oom is not None:
                    ending.guard("describing the OOM", on_oom)
            finally:
                ending.guard("finishing the record", self._finish(finish))
                ending.guard("writing the record", lambda: self.writer.write(record))
                for where, step in teardown:
                    ending.guard(where, step)
                if ending.first is not None or record.later_errors:
                    # A finishing step failed after the write: the record on disk says so too.
                    with contextlib.suppress(Exception):
                        self.writer.write(record)
                self.folder.release()
        self._raise_first()
        return record

    def _finish(self, finish: Step) -> Step:
        def both() -> None:
            self.record.duration_s = round(time.time() - self.started, 3)
            finish()
        return both

    def _raise_first(self) -> None:
        first, writer = self.ending.first, self.writer
        if writer.fallback is not None:  # the exit code says failed, the line says where
            cause = str(first).splitlines()[0] if first is not None and str(first) else ""
            if first is not None and not isinstance(first, HarnessError):
                cause = f"{type(first).__name__}: {cause}"
            raise RecordNotWritten(writer.line(cause)) from first
        if first is None:
            return
        # The CLI's one-line error names the record (harness/cli.py reads this attribute).
        setattr(first, "harness_record", str(writer.path))  # noqa: B010
        if self.record.status == "oom" and self.record.oom is not None:
            # An answer, not a traceback: one line with where and what to turn down.
            raise OutOfMemory((self.record.error or "").splitlines()[0]) from first
        raise first
