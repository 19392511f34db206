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
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader

from harness.checkpoint import ResumableBatches, to_cpu
from harness.checkpointing import training_checkpoints
from harness.config import config_to_dict
from harness.ema import ModelEMA
from harness.errors import Diverged, RunInterrupted, UsageError
from harness.flops import count_training
from harness.resume_changes import Fresh, changed_fields
from harness.start_weights import load_start_weights
from harness.timing import ResumedTimer
from harness.workload_config import declared_field

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
    return int(workload_config.steps or steps_per_epoch)


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
    """Train `run.workload` for `run.total_steps` optimizer steps on the batches of `loader`
    (a `Trainer`: see there for the arguments). Progress, losses, the timer and the trained
    model are left on `run` for the runner and the observers."""
    trainer = Trainer(run, loader, device, hooks, evaluate_now,
                      checkpoint_interval=checkpoint_interval,
                      keep_checkpoints=keep_checkpoints, progress=progress)
    trainer.build(resume_state)
    trainer.fit()


Pending = tuple[int, dict[str, torch.Tensor], Optional[torch.Tensor]]


class Trainer:
    """The training loop of one run, in the order a step happens: `accumulate` the
    micro-batches' gradients, `step` the optimizer, then at log, evaluation and checkpoint
    steps `log`, `evaluate` and `checkpoint` with the timed window paused.

    `hooks`: the plugin manager's hook relay (harness_run_start, harness_step_end).
    `evaluate_now(model)`: the interval evaluation (--eval-interval), called between steps.
    `checkpoint_interval`: write <out>/checkpoints/step_<N>.pt every N steps (0: never),
    keeping the newest `keep_checkpoints`. `progress`: updated with the current step and
    phase (forward/backward/optimizer/evaluation) for the record of a failure (OOM), and
    read for a stop request (the runner's first Ctrl-C).

    Its own state: model, optimizer, scheduler, scaler, the data stream, the clock, and the
    loss terms not yet logged and the memory peaks so far, which make it a checkpoint piece
    itself (`keys`, `state_dict`, `load_state_dict`). What the runner and the observers read
    (step, losses, evaluations, timer, memory, the trained model) is published on `run`.
    """

    keys = ("pending", "memory")

    def __init__(self, run: Run, loader: DataLoader, device: torch.device, hooks: Any,
                 evaluate_now: Callable[[torch.nn.Module], Any], *,
                 checkpoint_interval: int = 0, keep_checkpoints: int = 2,
                 progress: dict[str, Any] | None = None) -> None:
        cfg = run.config
        if len(loader) == 0:
            raise UsageError(f"training split has fewer samples than one batch "
                             f"({len(loader.dataset)} < {loader.batch_size}); "  # type: ignore[arg-type]
                             f"lower --batch-size")
        self.run, self.device, self.hooks, self.evaluate_now = run, device, hooks, evaluate_now
        self.checkpoint_interval, self.keep_checkpoints = checkpoint_interval, keep_checkpoints
        self.progress = progress if progress is not None else {}
        run.steps_per_epoch = max(1, len(loader) // cfg.grad_accum)
        run.total_steps = total_steps(cfg, run.workload.config, run.steps_per_epoch)
        self.stream = ResumableBatches(loader, run)
        self.batches: Iterator[Any] = iter(self.stream)
        self.timer = ResumedTimer(0, run.backend.synchronize)
        self.pending: list[Pending] = []  # (step, loss terms, grad norm), on the device
        self.window_memory: MemoryStats | None = None  # peaks of the window before an eval
        self.interval_times: list[tuple[float, float]] = []  # (iter, data) s since the last log
        self.stop_now = False
        self.start = self.warmup = 0

    # -- setup --
    def build(self, resume_state: dict[str, Any] | None = None) -> None:
        """Model, optimizer, scheduler and scaler, the checkpoint pieces, and the state of
        `resume_state` (a periodic checkpoint, harness/resume.py) put back."""
        run, wl, backend, strategy = self.run, self.run.workload, self.run.backend, self.run.strategy
        cfg = run.config
        if resume_state is None:
            # The first batch is read before the model is built (the random streams' order)
            # and is also the batch the FLOPs are counted on.
            first = next(self.batches)
            self.batches = itertools.chain([first], self.batches)
            host_model = wl.build_model()
            run.start_weights = load_start_weights(wl, host_model)
            if cfg.scale == "full" and not run.start_weights and strategy.is_main:
                print(f"[harness] warning: {wl.name} full from random weights; its published "
                      f"rows start from pretrained ones (--set backbone_weights=PATH or "
                      f"init_checkpoint=PATH), so `harness check` will call them not "
                      f"comparable", file=sys.stderr)
            run.model_info = count_training(host_model, wl, to_device(first, self.device),
                                            backend, self.device, cfg.precision)
        else:  # the first segment counted the FLOPs and loaded the starting weights; no
            host_model = wl.build_model()  # batch is read before the restore
        model = host_model.to(self.device)
        optimizer = wl.build_optimizer(model)
        self.scheduler = wl.build_scheduler(optimizer, run.total_steps)
        model = backend.prepare_model(model)
        self.model, self.optimizer = strategy.wrap(model, optimizer, cfg)
        decay = float(declared_field(wl.config, "ema_decay") or 0.0)
        run.ema = ModelEMA(strategy.unwrap(self.model), decay) if decay > 0 else None
        self.scaler = None if strategy.scales_loss else backend.grad_scaler(cfg.precision)
        self.grad_clip = wl.config.grad_clip
        self.checkpoints = training_checkpoints(
            run, host_model=host_model, optimizer=self.optimizer, scheduler=self.scheduler,
            scaler=self.scaler, ema=run.ema, batches=self.stream, timer=self.timer, loop=self,
            keep=self.keep_checkpoints)
        if resume_state is not None:
            self._restore(resume_state)
        self.start = run.step
        # A resumed segment repeats the warmup (excluded from the timed steps).
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(10, run.total_steps // 5)
        self.warmup = max(0, min(warmup, run.total_steps - self.start - 1))
        self.timer.start(self.start + self.warmup, self.warmup)
        run.timer = self.timer

    def _restore(self, state: dict[str, Any]) -> None:
        """The checkpoint's state; where the resumed run set other optimizer or schedule
        fields (`--resume DIR --set lr=...`), their fresh values replace the checkpoint's."""
        changes = changed_fields(config_to_dict(self.run.workload.config),
                                 state.get("workload_config") or {})
        fresh = Fresh(self.optimizer, self.scheduler) if changes else None
        self.checkpoints.load(state)
        if fresh is not None:
            fresh.reapply(self.optimizer, self.scheduler)

    # -- the loop --
    def fit(self) -> None:
        run = self.run
        self.hooks.harness_run_start(run=run)
        self.model.train()
        if self.warmup == 0:
            self._open_window()
        self.progress["training"] = True  # a first Ctrl-C now finishes the step (runner.py)
        for step in range(self.start, run.total_steps):
            self.step(step)
            self.between_steps()
            if self.stop_now:
                raise RunInterrupted(f"interrupted by {self.progress.get('stop_requested')}: "
                                     f"stopped after step {run.step} with a "
                                     f"checkpoint; continue with: harness run --resume "
                                     f"{run.out_dir}")
        self.progress["training"] = False
        self.timer.close_window()
        run.memory = _max_memory(self.window_memory, run.backend.memory())
        run.trained_model = run.strategy.unwrap(self.model)
        run.optimizer = self.optimizer

    def accumulate(self) -> tuple[dict[str, torch.Tensor], int, float, float]:
        """Forward and backward over --grad-accum micro-batches: the mean loss terms (on the
        device), the samples, and the seconds waiting for data and issuing the copies."""
        run, wl, backend, strategy = self.run, self.run.workload, self.run.backend, self.run.strategy
        cfg, clock = run.config, self.timer.clock  # data and copy times on the window's clock
        data_time = copy_time = 0.0
        samples = 0
        terms_sum: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            t0 = clock()
            batch = next(self.batches)
            t1 = clock()
            samples += wl.samples(batch)
            batch = to_device(batch, self.device)
            data_time += t1 - t0
            copy_time += clock() - t1
            with strategy.micro_step(self.model, last=micro == cfg.grad_accum - 1):
                self.progress["phase"] = "forward"
                with backend.trace("forward"), backend.autocast(cfg.precision):
                    terms = wl.loss(self.model, batch)
                loss: torch.Tensor = sum(terms.values())  # type: ignore[assignment]
                self.progress["phase"] = "backward"
                with backend.trace("backward"):
                    strategy.backward(loss, self.scaler)
            backend.after_backward()
            run.micro_steps += 1
            for k, v in terms.items():
                v = v.detach().float() / cfg.grad_accum
                terms_sum[k] = terms_sum[k] + v if k in terms_sum else v
        return terms_sum, samples, data_time, copy_time

    def step(self, step: int) -> None:
        """Optimizer step `step + 1`, ended on the clock (no device sync)."""
        run, backend, strategy = self.run, self.run.backend, self.run.strategy
        self.progress["step"] = step + 1
        terms, samples, data_time, copy_time = self.accumulate()
        self.progress["phase"] = "optimizer"
        with backend.trace("optimizer"):
            grad_norm = strategy.optimizer_step(self.model, self.optimizer, self.scaler,
                                                self.grad_clip)
        backend.after_optimizer_step()
        if self.scheduler is not None:
            self.scheduler.step()
        if run.ema is not None:
            run.ema.update(strategy.unwrap(self.model))
        run.step = step + 1
        # Every rank stops after the same step (under --nproc one host-side all-reduce): part
        # of the step's time, as the device keeps computing meanwhile.
        requested = bool(self.progress.get("stop_requested"))
        self.stop_now = strategy.any_rank(requested) and run.step != run.total_steps
        iter_time = self.timer.end_step(step, samples, data_time, copy_time)
        self.interval_times.append((iter_time, data_time))
        self.pending.append((run.step, terms, None if grad_norm is None else grad_norm.detach()))
        if run.step == self.start + self.warmup and self.warmup > 0:
            self._open_window()

    def between_steps(self) -> None:
        """Log, evaluate and checkpoint where this step calls for it, the clock paused
        (synchronized: logging reads values, evaluation runs the device, a checkpoint copies
        it to the host); on other steps the per-step hook runs inside the timed window (its
        host time counts to the next step)."""
        run, cfg = self.run, self.run.config
        last = run.step == run.total_steps
        log_now = run.step % cfg.log_interval == 0 or last
        eval_now = bool(cfg.eval_interval) and run.step % cfg.eval_interval == 0 and not last
        periodic = (bool(self.checkpoint_interval)
                    and run.step % self.checkpoint_interval == 0 and not last)
        ckpt_now = self.stop_now or periodic
        if log_now or eval_now or ckpt_now:
            self.timer.pause()
        if log_now:
            self.log()
        else:
            run.last_log = None
        self.hooks.harness_step_end(run=run, step=run.step)
        if eval_now:
            self.evaluate()
        if ckpt_now:  # last in the step: the RNG states are those the next step starts from
            self.checkpoint()
        self.timer.resume()

    def log(self) -> None:
        """The interval's loss row (the console shows the interval's means, as the README
        says); stops on the first non-finite value."""
        times = self.interval_times
        _log(self.run, self.pending, self.optimizer, sum(t for t, _ in times) / len(times),
             sum(d for _, d in times) / len(times),
             scaled=self.scaler is not None or self.run.strategy.scales_loss)
        self.pending = []
        self.interval_times = []

    def evaluate(self) -> None:
        """The interval evaluation: rank 0 evaluates the unwrapped model (DDP's forward would
        broadcast buffers from rank 0 alone) while the other ranks wait at a barrier, not in
        a collective. Its memory peak is not training's."""
        backend, strategy = self.run.backend, self.run.strategy
        if self.timer.is_open:
            self.window_memory = _max_memory(self.window_memory, backend.memory())
        self.progress["phase"] = "evaluation"
        strategy.on_main_only(lambda: self.evaluate_now(self.evaluated_model()))
        self.model.train()
        if self.timer.is_open:
            backend.synchronize()
            backend.reset_peak_memory()

    def evaluated_model(self) -> torch.nn.Module:
        """The weights evaluations score: the EMA where the recipe keeps one, else the model."""
        ema = self.run.ema
        return ema.model if ema is not None else self.run.strategy.unwrap(self.model)

    def checkpoint(self) -> None:
        """checkpoints/step_<N>.pt: every rank takes part (per-rank shares, DeepSpeed's
        engine); rank 0 writes."""
        self.checkpoints.save(self.run.step)

    def _open_window(self) -> None:
        self.run.backend.reset_peak_memory()
        self.timer.open_window()

    # -- the loop's own checkpoint piece --
    def state_dict(self) -> dict[str, Any]:
        memory = self.window_memory
        if self.timer.is_open:
            memory = _max_memory(memory, self.run.backend.memory())
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
