"""The training and evaluation loops the runner drives (kept apart to stay readable).

Hot-path rules: no `.item()` and no device sync per step; loss terms and grad norms stay
on the device and are read once per log interval, where non-finite values are also caught.
The timed window (harness/timing.py) holds training steps only: it pauses, synchronized,
around logging, evaluation and checkpoints; the host time of every step (the per-step
observer hook, the stop agreement between ranks) stays inside it.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader

from harness.checkpoint import ResumableBatches, to_cpu
from harness.checkpointing import training_checkpoints
from harness.errors import Diverged, RunInterrupted, UsageError
from harness.flops import count_training
from harness.timing import ResumedTimer

if TYPE_CHECKING:
    from harness.api import Backend, MemoryStats, Run, Workload
    from harness.config import RunConfig


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors in nested dicts/lists/tuples to `device`; leave anything else alone."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [to_device(v, device) for v in obj]
        return type(obj)(moved) if not hasattr(obj, "_fields") else type(obj)(*moved)
    return obj


def total_steps(config: RunConfig, workload_config: Any, steps_per_epoch: int) -> int:
    if config.steps is not None:
        return config.steps
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * steps_per_epoch))
    return int(getattr(workload_config, "steps", 0) or steps_per_epoch)


def _max_memory(a: MemoryStats | None, b: MemoryStats) -> MemoryStats:
    """Field-wise maximum of two windows' peaks (training before and after an evaluation)."""
    if a is None:
        return b
    merged: dict[str, Any] = {}
    for f in dataclasses.fields(b):
        x, y = getattr(a, f.name), getattr(b, f.name)
        merged[f.name] = max(x, y) if isinstance(x, int) and isinstance(y, int) else (
            y if y is not None else x)
    return type(b)(**merged)


def train(run: Run, loader: DataLoader, device: torch.device, hooks: Any,
          evaluate_now: Callable[[torch.nn.Module], Any], *,
          resume_state: dict[str, Any] | None = None, checkpoint_interval: int = 0,
          keep_checkpoints: int = 2, progress: dict[str, Any] | None = None) -> None:
    """Train `run.workload` for `run.total_steps` optimizer steps on the batches of `loader`.

    `hooks`: the plugin manager's hook relay (harness_run_start, harness_step_end).
    `evaluate_now(model)`: the interval evaluation (--eval-interval), called between steps
    with the timed window paused. Progress, losses, the timer and the trained model are
    left on `run` for the runner and the observers.
    `resume_state`: a periodic checkpoint to continue from (harness/resume.py);
    `checkpoint_interval`: write <out>/checkpoints/step_<N>.pt every N steps (0: never),
    keeping the newest `keep_checkpoints`. `progress`: updated with the current step and
    phase (forward/backward/optimizer/evaluation), for the record of a failure (OOM).
    """
    progress = progress if progress is not None else {}
    cfg, wl, backend, strategy = run.config, run.workload, run.backend, run.strategy
    if len(loader) == 0:
        raise UsageError(f"training split has fewer samples than one batch "
                         f"({len(loader.dataset)} < {loader.batch_size}); "  # type: ignore[arg-type]
                         f"lower --batch-size")
    run.steps_per_epoch = max(1, len(loader) // cfg.grad_accum)
    run.total_steps = total_steps(cfg, wl.config, run.steps_per_epoch)
    stream = ResumableBatches(loader, run)
    batches: Iterator[Any] = iter(stream)
    if resume_state is None:
        first = next(batches)  # also the batch the FLOPs are counted on
        batches = itertools.chain([first], batches)
        host_model = wl.build_model()
        run.model_info = count_training(host_model, wl, to_device(first, device), backend,
                                        device, cfg.precision)
    else:  # the FLOPs were counted by the first segment; no batch is read before the restore
        host_model = wl.build_model()
    model = host_model.to(device)
    optimizer = wl.build_optimizer(model)
    scheduler = wl.build_scheduler(optimizer, run.total_steps)
    model = backend.prepare_model(model)
    model, optimizer = strategy.wrap(model, optimizer, cfg)
    run_model = model
    scaler = None if strategy.scales_loss else backend.grad_scaler(cfg.precision)
    grad_clip = getattr(wl.config, "grad_clip", None)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(10, run.total_steps // 5)
    timer = ResumedTimer(0, backend.synchronize)
    clock = timer.clock  # data and copy times on the window's clock
    loop = _LoopState(backend, timer, device)
    checkpoints = training_checkpoints(
        run, host_model=host_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        batches=stream, timer=timer, loop=loop, keep=keep_checkpoints)
    if resume_state is not None:
        checkpoints.load(resume_state)
    start = run.step
    # A resumed segment repeats the warmup (excluded from the timed steps).
    warmup = max(0, min(warmup, run.total_steps - start - 1))
    timer.start(start + warmup, warmup)
    run.timer = timer
    hooks.harness_run_start(run=run)
    model.train()
    if warmup == 0:
        backend.reset_peak_memory()
        timer.open_window()
    progress["training"] = True  # a first Ctrl-C now finishes the step (runner.py)
    interval_times: list[tuple[float, float]] = []  # (iter, data) seconds since the last log
    for step in range(start, run.total_steps):
        progress["step"] = step + 1
        data_time = copy_time = 0.0
        samples = 0
        terms_sum: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            t0 = clock()
            batch = next(batches)
            t1 = clock()
            samples += wl.samples(batch)
            batch = to_device(batch, device)
            data_time += t1 - t0
            copy_time += clock() - t1
            with strategy.micro_step(run_model, last=micro == cfg.grad_accum - 1):
                progress["phase"] = "forward"
                with backend.trace("forward"), backend.autocast(cfg.precision):
                    terms = wl.loss(run_model, batch)
                loss: torch.Tensor = sum(terms.values())  # type: ignore[assignment]
                progress["phase"] = "backward"
                with backend.trace("backward"):
                    strategy.backward(loss, scaler)
            backend.after_backward()
            run.micro_steps += 1
            for k, v in terms.items():
                v = v.detach().float() / cfg.grad_accum
                terms_sum[k] = terms_sum[k] + v if k in terms_sum else v
        progress["phase"] = "optimizer"
        with backend.trace("optimizer"):
            grad_norm = strategy.optimizer_step(run_model, optimizer, scaler, grad_clip)
        backend.after_optimizer_step()
        if scheduler is not None:
            scheduler.step()
        run.step = step + 1
        last = run.step == run.total_steps
        # Every rank stops after the same step (under --nproc one host-side all-reduce): part
        # of the step's time, as the device keeps computing meanwhile.
        stop_now = strategy.any_rank(bool(progress.get("stop_requested"))) and not last
        iter_time = timer.end_step(step, samples, data_time, copy_time)
        interval_times.append((iter_time, data_time))
        loop.pending.append((run.step, terms_sum, None if grad_norm is None else grad_norm.detach()))
        if run.step == start + warmup and warmup > 0:
            backend.reset_peak_memory()
            timer.open_window()
        log_now = run.step % cfg.log_interval == 0 or last
        eval_now = bool(cfg.eval_interval) and run.step % cfg.eval_interval == 0 and not last
        periodic = bool(checkpoint_interval) and run.step % checkpoint_interval == 0 and not last
        ckpt_now = stop_now or periodic
        # Logging reads values (a sync anyway), evaluation runs the device and a checkpoint
        # copies it to the host: they pause the clock, synchronized. On other steps the
        # per-step hook runs inside the window (its host time counts to the next step).
        if log_now or eval_now or ckpt_now:
            timer.pause()
        if log_now:  # the console shows the interval's means, as the README says
            _log(run, loop.pending, optimizer,
                 sum(t for t, _ in interval_times) / len(interval_times),
                 sum(d for _, d in interval_times) / len(interval_times),
                 scaled=scaler is not None or strategy.scales_loss)
            loop.pending = []
            interval_times = []
        else:
            run.last_log = None
        hooks.harness_step_end(run=run, step=run.step)
        if eval_now:
            if timer.is_open:
                loop.window_memory = _max_memory(loop.window_memory, backend.memory())
            # Rank 0 evaluates the unwrapped model (DDP's forward would broadcast buffers from
            # rank 0 alone) while the other ranks wait at a barrier, not in a collective.
            progress["phase"] = "evaluation"
            strategy.on_main_only(lambda: evaluate_now(strategy.unwrap(run_model)))
            model.train()
            if timer.is_open:
                backend.synchronize()
                backend.reset_peak_memory()  # evaluation's peak is not training's
        if ckpt_now:  # last in the step: the RNG states are those the next step starts from
            # Every rank takes part (per-rank shares, DeepSpeed's engine); rank 0 writes.
            checkpoints.save(run.step)
        timer.resume()
        if stop_now:
            raise RunInterrupted(f"interrupted: stopped after step {run.step} with a checkpoint; "
                                 f"continue with: harness run --resume {run.out_dir}")
    progress["training"] = False
    timer.close_window()
    run.memory = _max_memory(loop.window_memory, backend.memory())
    run.trained_model = strategy.unwrap(run_model)
    run.optimizer = optimizer


class _LoopState:
    """The loop's own checkpoint piece: the loss terms and grad norms not yet logged (read
    to the host at the next log step) and the memory peaks of the training window before an
    evaluation (an evaluation's peak is not training's)."""

    keys = ("pending", "memory")

    def __init__(self, backend: Backend, timer: ResumedTimer, device: torch.device) -> None:
        self.backend, self.timer, self.device = backend, timer, device
        self.pending: list[tuple[int, dict[str, torch.Tensor], torch.Tensor | None]] = []
        self.window_memory: MemoryStats | None = None

    def state_dict(self) -> dict[str, Any]:
        memory = self.window_memory
        if self.timer.is_open:
            memory = _max_memory(memory, self.backend.memory())
        return {"pending": [{"step": s, "terms": to_cpu(t), "grad_norm": to_cpu(g)}
                            for s, t, g in self.pending],
                "memory": None if memory is None else dataclasses.asdict(memory)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from harness.api import MemoryStats

        device = self.device
        self.pending = [(p["step"], {k: v.to(device) for k, v in p["terms"].items()},
                         None if p["grad_norm"] is None else p["grad_norm"].to(device))
                        for p in state["pending"]]
        memory = state.get("memory")
        self.window_memory = None if memory is None else MemoryStats(**memory)


def _log(run: Run, pending: list, optimizer: Any, iter_time: float, data_time: float,
         scaled: bool) -> None:
    """Read the interval's values to the host in one go; stop on the first non-finite one."""
    names = list(pending[-1][1])
    losses = torch.stack([torch.stack([t[n] for n in names]) for _, t, _ in pending]).cpu()
    norms = [g for _, _, g in pending]
    norm_vals = (torch.stack(norms).float().cpu() if all(g is not None for g in norms)
                 else None)
    for i, (step, _, _) in enumerate(pending):
        bad_loss = not torch.isfinite(losses[i]).all()
        # With a GradScaler an inf grad norm is routine (the step is skipped), not divergence.
        bad_norm = norm_vals is not None and not scaled and not torch.isfinite(norm_vals[i])
        if bad_loss or bad_norm:
            detail = ", ".join(f"{n}={losses[i, j].item():.4g}" for j, n in enumerate(names))
            gn = "n/a" if norm_vals is None else f"{norm_vals[i].item():.4g}"
            raise Diverged(f"non-finite {'loss' if bad_loss else 'grad norm'} at step {step}: "
                           f"loss={losses[i].sum().item():.4g}, {detail}, grad_norm={gn}")
    mean = losses.mean(0)
    row: dict[str, Any] = {"step": run.step, "epoch": run.epoch,
                           "loss": round(float(mean.sum()), 6)}
    row.update({n: round(float(mean[j]), 6) for j, n in enumerate(names)})
    if norm_vals is not None:
        row["grad_norm"] = round(float(norm_vals.mean()), 6)
    row["lr"] = optimizer.param_groups[0]["lr"]
    row["iter_time"] = round(iter_time, 4)
    row["data_time"] = round(data_time, 4)
    run.last_log = row
    run.losses.append(row)


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[Any]
    inference_s: float
    eval_s: float

    def row(self, step: int) -> dict[str, Any]:
        """The record's `evals` entry."""
        return {"step": step, "metrics": self.metrics, "eval_samples": len(self.predictions),
                "inference_s": round(self.inference_s, 3), "eval_s": round(self.eval_s, 3)}


@torch.no_grad()
def evaluate(workload: Workload, model: torch.nn.Module, loader: DataLoader, backend: Backend,
             precision: str, device: torch.device) -> EvalResult:
    """Predict over the val split in order, then score with the workload's official metric."""
    was_training = model.training
    model.eval()
    predictions: list[Any] = []
    t0 = time.perf_counter()
    for batch in loader:
        batch = to_device(batch, device)
        with backend.autocast(precision):
            predictions.extend(workload.predict(model, batch))
    backend.synchronize()
    infer_s = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in workload.evaluate(predictions).items()}
    model.train(was_training)
    return EvalResult(metrics, predictions, infer_s, time.perf_counter() - t0)
