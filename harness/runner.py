"""One run: setup -> warmup steps -> timed window -> evaluation -> record.

The harness owns the loop and the clock; the workload owns model, data and metric; the
backend owns the device. The job's life (the running record, signals, the status, the
guarded teardown, the record-writer fallback) is harness/lifecycle.py's, shared with
`harness eval`; this module holds a run's phases and what its record says.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from harness import plugins
from harness.api import Run
from harness.checkpoint import effective_interval, resume_hint
from harness.errors import RunInterrupted
from harness.config import RunConfig, config_to_dict
from harness.lifecycle import SIGNAL_STOP, Job, backend_memory, fallback_ops
from harness.oom import describe_oom, memory_hint
from harness.outdir import RecordWriter, claim_run_folder, default_run_folder, write_predictions
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
from harness.records import Record, environment
from harness.resume import continued_record as _continued_record
from harness.resume import resume_checkpoint as _resume_checkpoint
from harness.strategies import Strategy
from harness.training import EvalResult, evaluate, train

__all__ = ["DEFAULT_CACHE", "Run", "execute", "default_out_dir", "save_checkpoint"]


def default_out_dir(run: RunConfig) -> Path:
    return default_run_folder(run.workload, run.backend, run.precision)


def weights_dtype(strategy: Strategy, precision: str) -> str:
    """The dtype the weights are kept in: fp32 under autocast, the precision itself where the
    strategy casts the model (DeepSpeed bf16/fp16)."""
    if precision != "fp32" and strategy.low_precision_weights:
        return precision
    return "fp32"


def _base_record(run: Run) -> Record:
    cfg = run.config
    return Record(
        kind="train", workload=cfg.workload, scale=cfg.scale, backend=cfg.backend,
        mode=run.backend.mode, precision=cfg.precision,
        config={"run": cfg.to_dict(), "workload": config_to_dict(run.workload.config)},
        weights_dtype=weights_dtype(run.strategy, cfg.precision), strategy=run.strategy.name,
        world_size=run.strategy.world_size, seed=cfg.seed, emulated=run.backend.emulated,
        metric_directions=dict(run.workload.metrics) or None,
        primary_metric=run.workload.primary_metric or None)


def execute(config: RunConfig, resume: Path | None = None,
            overwrite: bool = False) -> Record:
    """Run one workload on one backend; return the record (also written to record.json).

    Usage errors found before the run starts raise without a record. Anything after
    that writes the record with its status and then re-raises the first error.
    `resume`: a run folder whose newest complete checkpoint this run continues from
    (`config` is then that run's recorded config, see harness/resume.py).
    `overwrite`: an --out folder holding a previous run is cleared instead of refused.
    """
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
        # After the claim: a refused resume (the run is still going) must not touch its
        # checkpoints folder (finding the newest removes torn temp files) nor say "resuming".
        resume_state, resume_note = _resume_checkpoint(config, resume)
        run = Run(config, prepared.workload, prepared.backend, prepared.strategy, out_dir)
        record = _base_record(run)
        if resume is not None:
            record = dataclasses.replace(
                record, **_continued_record(resume, resume_state, resume_note,
                                            config_to_dict(prepared.workload.config)))
    except BaseException:
        folder.release()
        raise
    job = Job(record, writer, folder, started=run.started)
    job.start()

    def observers_end() -> None:
        run.record_path = job.record_path
        pm.hook.harness_run_end(run=run, record=record)

    return job.run(
        lambda: _execute_run(prepared, run, record, pm, resume_state, job.progress),
        finish=lambda: _finish_record(run, record),
        teardown=[("harness_run_end observers", observers_end),
                  ("closing the backend", prepared.backend.close),
                  ("strategy teardown", prepared.strategy.teardown)],
        on_oom=lambda: describe_oom(record, run.backend, job.progress,
                                    memory_hint(run, job.progress.get("phase"))),
        ctrl_c_finishes_step=True)


def _execute_run(prepared: PreparedRun, run: Run, record: Record, pm: Any,
                 resume_state: dict[str, Any] | None, progress: dict[str, Any]) -> None:
    cfg = run.config
    setup_run(prepared, load_data=False)
    record.world_size = prepared.strategy.world_size
    record.env = environment(prepared.backend.describe())
    data = prepared.load_data()
    if cfg.eval or cfg.eval_interval:
        check_eval_split(data)  # an empty or broken val split is found before step 1
    # datasets() may have resolved config fields from the data: record what was used.
    record.config["workload"] = config_to_dict(run.workload.config)
    record.data = {"source": data.source, "from_data": dict(data.from_data)}
    record.workload_source = run.workload.source_info()
    device = prepared.device
    assert device is not None

    def evaluate_now(model: torch.nn.Module) -> EvalResult:
        result = evaluate(run.workload, model, prepared.loader("val"), run.backend,
                          cfg.precision, device)
        run.evals.append(result.row(run.step))
        return result

    interval = effective_interval(cfg.checkpoint_interval, cfg.scale)
    try:
        train(run, prepared.loader("train"), device, pm.hook, evaluate_now,
              resume_state=resume_state, checkpoint_interval=interval,
              keep_checkpoints=cfg.keep_checkpoints, progress=progress)
    except RunInterrupted as exc:
        if not str(exc).startswith(SIGNAL_STOP):  # a first Ctrl-C's line says it already
            raise
        # A signal stopped it at once (SIGTERM, a second Ctrl-C): say whether it can resume.
        raise RunInterrupted(f"{exc}; {resume_hint(run.out_dir)}") from exc
    if run.model_info is not None:
        record.model = run.model_info
    record.start_weights = run.start_weights
    record.ema = run.ema.describe() if run.ema is not None else None
    record.schedule = schedule(run)
    if cfg.checkpoint and prepared.strategy.is_main:
        # Before the evaluation: an evaluation that fails loses no training.
        save_checkpoint(run, run.out_dir / "checkpoint.pt")
    if cfg.eval and prepared.strategy.is_main:
        progress["phase"] = "evaluation"
        # The weights the recipe evaluates: the EMA where it keeps one (harness/ema.py).
        result = evaluate_now(run.ema.model if run.ema is not None else run.trained_model)
        record.metrics = result.metrics
        record.predictions = write_predictions(run.workload, result.predictions, run.out_dir)
        pm.hook.harness_eval_end(run=run, metrics=result.metrics)


def save_checkpoint(run: Run, path: Path) -> None:
    """Final weights and optimizer state, on the CPU so any backend can load them; written
    by the checkpoint manager (harness/checkpointing.py), through its one atomic writer."""
    from harness.checkpointing import final_checkpoint

    final_checkpoint(run, config_to_dict(run.workload.config), path.parent).write(path)


def _finish_record(run: Run, record: Record) -> None:
    """Fill in what the run measured; each part on its own, so one failing part (a sticky
    device error in synchronize) leaves the others in the record."""
    record.losses = run.losses
    record.evals = run.evals
    if run.evals and not record.metrics:
        record.metrics = run.evals[-1]["metrics"]
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
        record.throughput = throughput
    record.memory = backend_memory(run.backend, run.memory)
    record.fallback_ops = fallback_ops(run.backend)
    try:  # again at the end: what it lists (the ops a config's model called) grows in eval
        record.workload_source = run.workload.source_info()
    except Exception as exc:  # noqa: BLE001 - reported below, after the rest is filled in
        errors.append(exc)
    if errors:
        raise errors[0]


def schedule(run: Run) -> dict[str, Any]:
    """What the run trained beside what its preset plans (`harness check` and `parity`
    call runs of other schedules not comparable): optimizer steps and batch per step."""
    preset = type(run.workload).presets()[run.config.scale]
    return {"optimizer_steps": run.total_steps, "steps_per_epoch": run.steps_per_epoch,
            "preset_steps": int(preset.steps or run.steps_per_epoch),
            "batch_size": run.workload.config.batch_size, "preset_batch_size": preset.batch_size,
            "grad_accum": run.config.grad_accum, "world_size": run.strategy.world_size}

