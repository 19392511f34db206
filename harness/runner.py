"""One run: setup -> warmup steps -> timed window -> evaluation -> record.

The harness owns the loop and the clock; the workload owns model, data and metric; the
backend owns the device. Failures of any kind still write record.json with a status, and
each finishing step (closing the window, observers, backend and strategy teardown) is
guarded on its own, so a raising one never skips the others or the record.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from harness import plugins
from harness.api import Run
from harness.checkpoint import effective_interval
from harness.config import RunConfig, config_to_dict
from harness.errors import Diverged, HarnessError, RunInterrupted, worker_error_origin
from harness.oom import OutOfMemory, describe_oom
from harness.outdir import RecordNotWritten, RecordWriter, claim_run_folder, default_run_folder
from harness.prepare import (  # noqa: F401 - re-exported: the names callers used before
    DEFAULT_CACHE,
    PreparedRun,
    check_eval_split,
    check_requirements,
    instantiate_workload,
    prepare_backend,
    resolve_run,
    resolve_workload_config,
    setup_run,
)
from harness.records import SCHEMA, _umask, environment
from harness.resume import continued_record as _continued_record
from harness.resume import resume_checkpoint as _resume_checkpoint
from harness.strategies import Strategy
from harness.training import EvalResult, evaluate, train

__all__ = ["DEFAULT_CACHE", "Run", "execute", "default_out_dir", "save_checkpoint"]


def default_out_dir(run: RunConfig) -> Path:
    return default_run_folder(run.workload, run.backend, run.precision)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (schedulers, CI cancel) ends the run like SIGINT: with a record."""
    def handler(signum: int, frame: Any) -> None:
        raise RunInterrupted(f"received signal {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _first_sigint_finishes_the_step(progress: dict[str, Any], enabled: bool) -> Iterator[None]:
    """Ctrl-C once during training: finish the step, write a checkpoint and the record
    (status interrupted, resumable); twice, or outside the training loop: stop at once.
    Under --nproc every worker gets the SIGINT from the launcher, maybe in different steps:
    the loop's `strategy.any_rank` makes all of them stop after the same one."""
    def handler(signum: int, frame: Any) -> None:
        if progress.get("training") and not progress.get("stop_requested"):
            progress["stop_requested"] = True
            print(f"\n[harness] interrupt: finishing step {progress.get('step')}, then writing "
                  f"a checkpoint (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt

    previous = None
    if enabled:
        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            enabled = False
    try:
        yield
    finally:
        if enabled:
            signal.signal(signal.SIGINT, previous)


def weights_dtype(strategy: Strategy, precision: str) -> str:
    """The dtype the weights are kept in: fp32 under autocast, the precision itself where the
    strategy casts the model (DeepSpeed bf16/fp16)."""
    if precision != "fp32" and getattr(strategy, "low_precision_weights", False):
        return precision
    return "fp32"


def _base_record(run: Run) -> dict[str, Any]:
    cfg = run.config
    return {
        "schema": SCHEMA, "kind": "train", "workload": cfg.workload, "scale": cfg.scale,
        "config": {"run": cfg.to_dict(), "workload": config_to_dict(run.workload.config)},
        "backend": cfg.backend, "mode": run.backend.mode, "precision": cfg.precision,
        "weights_dtype": weights_dtype(run.strategy, cfg.precision),
        "strategy": run.strategy.name, "world_size": run.strategy.world_size, "seed": cfg.seed,
        "emulated": run.backend.emulated, "status": "running", "error": None,
        "metrics": {}, "throughput": {}, "memory": {}, "losses": [], "evals": [],
        "model": {"params": None, "train_flops_per_sample": None}, "predictions": None,
        "fallback_ops": [], "env": {},
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": None,
    }


def _status_for(exc: BaseException) -> str:
    if isinstance(exc, Diverged):
        return "diverged"
    if isinstance(exc, (KeyboardInterrupt, RunInterrupted)):
        return "interrupted"
    if is_oom(exc):
        return "oom"
    return "failed"


def is_oom(exc: BaseException) -> bool:
    """The device's OOM error, or the CPU allocator's ("DefaultCPUAllocator: can't allocate
    memory"), which torch raises as a plain RuntimeError."""
    text = str(exc).lower()
    return (isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text
            or "can't allocate memory" in text)


def _describe(exc: BaseException) -> str:
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(exc, HarnessError):
        return detail
    return detail + "\n" + "".join(traceback.format_tb(exc.__traceback__)[-3:])


class _Ending:
    """The run's first error and the record's status; later errors are listed apart."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.first: BaseException | None = None

    def fail(self, exc: BaseException, where: str = "") -> None:
        if self.first is None:
            self.first = exc
            self.record["status"] = _status_for(exc)
            self.record["error"] = (f"{where}: " if where else "") + _describe(exc)
        else:
            self.record.setdefault("later_errors", []).append(
                f"{where}: {type(exc).__name__}: {exc}"[:500])

    def guard(self, where: str, step: Callable[[], Any]) -> None:
        try:
            step()
        except BaseException as exc:  # noqa: BLE001 - the next finishing step still runs
            self.fail(exc, where)


def execute(config: RunConfig, resume: Path | None = None,
            overwrite: bool = False) -> dict[str, Any]:
    """Run one workload on one backend; return the record (also written to record.json).

    Usage errors found before the run starts raise without a record. Anything after
    that writes the record with its status and then re-raises the first error.
    `resume`: a run folder whose newest complete checkpoint this run continues from
    (`config` is then that run's recorded config, see harness/resume.py).
    `overwrite`: an --out folder holding a previous run is cleared instead of refused.
    """
    resume_state, resume_note = _resume_checkpoint(config, resume)
    prepared = resolve_run(config)
    pm = plugins.get_plugin_manager()
    pm.hook.harness_configure(config=config)
    out_dir = Path(config.out) if config.out else default_out_dir(config)
    # Only rank 0 owns record.json; other ranks keep theirs beside it for debugging.
    rank = int(os.environ.get("RANK", "0"))
    folder = claim_run_folder(out_dir, overwrite=overwrite, resume=resume is not None,
                              main=rank == 0)
    writer = RecordWriter(out_dir / ("record.json" if rank == 0 else f"record.rank{rank}.json"))
    try:
        run = Run(config, prepared.workload, prepared.backend, prepared.strategy, out_dir)
        record = _base_record(run)
        if resume is not None:
            record.update(_continued_record(resume, resume_state, resume_note))
        writer.write(record)
        if writer.fallback is not None:  # nothing can be recorded here: do not start
            record.update(status="failed", error=f"writing the record: {writer.failure}")
            writer.write(record)
            raise RecordNotWritten(writer.line())
    except BaseException:
        folder.release()
        raise
    ending = _Ending(record)
    progress: dict[str, Any] = {}
    with _sigterm_as_interrupt(), _first_sigint_finishes_the_step(progress, True):
        try:
            _execute_run(prepared, run, record, pm, resume_state, progress)
            record["status"] = "ok"
        except BaseException as exc:  # noqa: BLE001 - every ending gets a record
            # A worker's error as the main's one line; the record says if evaluation failed.
            ending.fail(worker_error_origin(exc),
                        "evaluation" if progress.get("phase") == "evaluation" else "")
            if record["status"] == "oom":
                ending.guard("describing the OOM", lambda: describe_oom(run, record, progress))
        finally:
            ending.guard("finishing the record", lambda: _finish_record(run, record))
            ending.guard("writing the record", lambda: writer.write(record))
            run.record_path = writer.fallback or writer.path
            ending.guard("harness_run_end observers",
                         lambda: pm.hook.harness_run_end(run=run, record=record))
            ending.guard("closing the backend", prepared.backend.close)
            ending.guard("strategy teardown", prepared.strategy.teardown)
            if ending.first is not None or "later_errors" in record:
                # A finishing step failed after the write: the record on disk says so too.
                with contextlib.suppress(Exception):
                    writer.write(record)
            folder.release()
    if writer.fallback is not None:  # the exit code says failed, the line says where it went
        first = ending.first
        cause = str(first).splitlines()[0] if first is not None and str(first) else ""
        if first is not None and not isinstance(first, HarnessError):
            cause = f"{type(first).__name__}: {cause}"
        raise RecordNotWritten(writer.line(cause)) from first
    if ending.first is not None:
        # The CLI's one-line error names the record (harness/cli.py reads this attribute).
        setattr(ending.first, "harness_record", str(writer.path))  # noqa: B010
        if record["status"] == "oom" and "oom" in record:
            # An answer, not a traceback: one line with where and what to turn down.
            raise OutOfMemory(record["error"].splitlines()[0]) from ending.first
        raise ending.first
    return record


def _execute_run(prepared: PreparedRun, run: Run, record: dict[str, Any], pm: Any,
                 resume_state: dict[str, Any] | None, progress: dict[str, Any]) -> None:
    cfg = run.config
    setup_run(prepared, load_data=False)
    record["world_size"] = prepared.strategy.world_size
    record["env"] = environment(prepared.backend.describe())
    data = prepared.load_data()
    if cfg.eval or cfg.eval_interval:
        check_eval_split(data)  # an empty or broken val split is found before step 1
    # datasets() may have resolved config fields from the data: record what was used.
    record["config"]["workload"] = config_to_dict(run.workload.config)
    record["data"] = {"source": data.source, "from_data": dict(data.from_data)}
    record["data_source"] = data.source
    device = prepared.device
    assert device is not None

    def evaluate_now(model: torch.nn.Module) -> EvalResult:
        result = evaluate(run.workload, model, prepared.loader("val"), run.backend,
                          cfg.precision, device)
        run.evals.append(result.row(run.step))
        return result

    interval = effective_interval(cfg.checkpoint_interval, cfg.scale)
    train(run, prepared.loader("train"), device, pm.hook, evaluate_now,
          resume_state=resume_state, checkpoint_interval=interval,
          keep_checkpoints=cfg.keep_checkpoints, progress=progress)
    if run.model_info is not None:
        record["model"] = run.model_info
    if cfg.checkpoint and prepared.strategy.is_main:
        # Before the evaluation: an evaluation that fails loses no training.
        save_checkpoint(run, run.out_dir / "checkpoint.pt")
    if cfg.eval and prepared.strategy.is_main:
        progress["phase"] = "evaluation"
        result = evaluate_now(run.trained_model)
        record["metrics"] = result.metrics
        record["predictions"] = write_predictions(run, result.predictions)
        pm.hook.harness_eval_end(run=run, metrics=result.metrics)


def write_predictions(run: Run, predictions: list[Any]) -> dict[str, Any] | None:
    """The workload's submission file under <out>/predictions; its path relative to the run."""
    pred_dir = run.out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    info = run.workload.write_predictions(predictions, pred_dir.resolve())
    if info is None:
        with contextlib.suppress(OSError):
            pred_dir.rmdir()  # nothing written: no empty folder left behind
        return None
    info = dict(info)
    if info.get("path"):
        path = Path(info["path"])
        if not path.is_absolute():
            path = pred_dir.resolve() / path
        info["path"] = os.path.relpath(path, run.out_dir.resolve())
    return info


def _to_cpu(obj: Any) -> Any:
    from harness.checkpoint import to_cpu

    return to_cpu(obj)


def save_checkpoint(run: Run, path: Path) -> None:
    """Final weights and optimizer state, on the CPU so any backend can load them; written
    by the checkpoint manager (harness/checkpointing.py), through its one atomic writer."""
    from harness.checkpointing import final_checkpoint

    final_checkpoint(run, config_to_dict(run.workload.config), path.parent).write(path)


def _finish_record(run: Run, record: dict[str, Any]) -> None:
    """Fill in what the run measured; each part on its own, so one failing part (a sticky
    device error in synchronize) leaves the others in the record."""
    record["duration_s"] = round(time.time() - run.started, 3)
    record["losses"] = run.losses
    record["evals"] = run.evals
    if run.evals and not record["metrics"]:
        record["metrics"] = run.evals[-1]["metrics"]
    errors: list[BaseException] = []
    timer = run.timer
    if timer is not None:
        try:
            timer.close_window()
        except Exception as exc:  # noqa: BLE001 - reported below, after the rest is filled in
            errors.append(exc)
        throughput: dict[str, Any] = dict(timer.summary(run.strategy.world_size))
        steps = run.step
        if run.optimizer is not None:  # the engine's own count where it keeps one (DeepSpeed)
            with contextlib.suppress(Exception):
                steps = run.strategy.optimizer_steps_taken(run.optimizer, run.step)
        throughput.update(optimizer_steps=steps, micro_steps=run.micro_steps,
                          total_steps=run.total_steps, grad_accum=run.config.grad_accum,
                          step_times_s=[round(t, 6) for t in timer.step_times])
        if run.backend.emulated:
            throughput["meaningful"] = False
            throughput["note"] = "emulated device: speed is the CPU emulation's, not hardware's"
        record["throughput"] = throughput
    try:
        memory: dict[str, Any] = dataclasses.asdict(run.memory or run.backend.memory())
    except Exception as exc:  # noqa: BLE001 - memory is reported, never fatal
        memory = {"error": repr(exc)}
    if run.backend.emulated:
        memory["meaningful"] = False
    record["memory"] = memory
    try:
        record["fallback_ops"] = run.backend.fallback_report()
    except Exception:  # noqa: BLE001
        record["fallback_ops"] = []
    if errors:
        raise errors[0]
