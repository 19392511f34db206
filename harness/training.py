"""The training and evaluation loops the runner drives (kept apart to stay readable).

Hot-path rules: no `.item()` and no device sync per step; loss terms and grad norms stay
on the device and are read once per log interval, where non-finite values are also caught.
"""
from __future__ import annotations

import itertools
import math
import random
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from harness.errors import Diverged, UsageError
from harness.flops import count_training
from harness.timing import StepTimer

if TYPE_CHECKING:
    from harness.api import Datasets
    from harness.runner import Run


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


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(run: Run, dataset: Any, collate: Any, train: bool) -> DataLoader:
    wcfg = run.workload.config
    batch = getattr(wcfg, "batch_size" if train else "eval_batch_size", None) or 1
    workers = getattr(wcfg, "num_workers", 0) or 0
    gen = torch.Generator().manual_seed(run.config.seed)
    common: dict[str, Any] = dict(collate_fn=collate, num_workers=workers,
                                  worker_init_fn=_seed_worker, generator=gen,
                                  persistent_workers=workers > 0 and train)
    if train:
        batch_sampler = run.workload.train_batch_sampler(
            dataset, batch, run.strategy.world_size, run.strategy.rank, run.config.seed)
        if batch_sampler is not None:
            if not hasattr(batch_sampler, "__len__"):
                raise UsageError(f"workload {run.workload.name}: train_batch_sampler() returned "
                                 f"{type(batch_sampler).__name__} without __len__ (batches per "
                                 f"epoch on this rank)")
            return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    sampler = None
    if train and run.strategy.world_size > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=run.strategy.world_size, rank=run.strategy.rank,
            shuffle=True, seed=run.config.seed)
    return DataLoader(dataset, batch_size=batch, shuffle=train and sampler is None,
                      sampler=sampler, drop_last=train, **common)


def _batches(loader: DataLoader, run: Run) -> Iterator[Any]:
    """Endless iteration over epochs; run.epoch follows along."""
    while True:
        # DistributedSampler, or a workload's batch sampler that has set_epoch.
        for sampler in (loader.sampler, loader.batch_sampler):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(run.epoch)
        yield from loader
        run.epoch += 1


def total_steps(run: Run, steps_per_epoch: int) -> int:
    cfg = run.config
    if cfg.steps is not None:
        return cfg.steps
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * steps_per_epoch))
    return int(getattr(run.workload.config, "steps", 0) or steps_per_epoch)


def train(run: Run, data: Datasets, device: torch.device, pm: Any) -> None:
    cfg, wl, backend, strategy = run.config, run.workload, run.backend, run.strategy
    loader = make_loader(run, data.train, data.collate, train=True)
    if len(loader) == 0:
        raise UsageError(f"training split has fewer samples than one batch "
                         f"({len(data.train)} < {loader.batch_size}); lower --batch-size")
    run.steps_per_epoch = max(1, len(loader) // cfg.grad_accum)
    run.total_steps = total_steps(run, run.steps_per_epoch)
    batches = _batches(loader, run)
    first = next(batches)  # also the batch the FLOPs are counted on
    batches = itertools.chain([first], batches)
    host_model = wl.build_model()
    run.model_info = count_training(host_model, wl, to_device(first, device), backend, device)
    model = host_model.to(device)
    optimizer = wl.build_optimizer(model)
    scheduler = wl.build_scheduler(optimizer, run.total_steps)
    model = backend.prepare_model(model)
    model, optimizer = strategy.wrap(model, optimizer, cfg)
    run_model = model
    scaler = None if strategy.scales_loss else backend.grad_scaler(cfg.precision)
    grad_clip = getattr(wl.config, "grad_clip", None)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(10, run.total_steps // 5)
    warmup = max(0, min(warmup, run.total_steps - 1))
    run.timer = timer = StepTimer(warmup, backend.synchronize)
    pending: list[tuple[int, dict[str, torch.Tensor], torch.Tensor | None]] = []
    pm.hook.harness_run_start(run=run)
    model.train()
    if warmup == 0:
        backend.reset_peak_memory()
        timer.open_window()
    for step in range(run.total_steps):
        timer.start_step()
        data_time = 0.0
        samples = 0
        terms_sum: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            t0 = time.perf_counter()
            batch = next(batches)
            samples += wl.samples(batch)
            batch = to_device(batch, device)
            data_time += time.perf_counter() - t0
            with strategy.micro_step(run_model, last=micro == cfg.grad_accum - 1):
                with backend.trace("forward"), backend.autocast(cfg.precision):
                    terms = wl.loss(run_model, batch)
                loss = sum(terms.values())
                with backend.trace("backward"):
                    strategy.backward(loss, scaler)
            backend.after_backward()
            run.micro_steps += 1
            for k, v in terms.items():
                v = v.detach().float() / cfg.grad_accum
                terms_sum[k] = terms_sum[k] + v if k in terms_sum else v
        with backend.trace("optimizer"):
            grad_norm = strategy.optimizer_step(run_model, optimizer, scaler, grad_clip)
        backend.after_optimizer_step()
        if scheduler is not None:
            scheduler.step()
        run.step = step + 1
        iter_time = timer.end_step(step, samples, data_time)
        pending.append((run.step, terms_sum, None if grad_norm is None else grad_norm.detach()))
        if run.step == warmup and warmup > 0:
            backend.reset_peak_memory()
            timer.open_window()
        last = run.step == run.total_steps
        if run.step % cfg.log_interval == 0 or last:
            _log(run, pending, optimizer, iter_time, data_time,
                 scaled=scaler is not None or strategy.scales_loss)
            pending = []
        else:
            run.last_log = None
        pm.hook.harness_step_end(run=run, step=run.step)
        if cfg.eval_interval and run.step % cfg.eval_interval == 0 and not last:
            # Rank 0 evaluates the unwrapped model (DDP's forward would broadcast buffers from
            # rank 0 alone) while the other ranks wait at a barrier, not in a collective.
            strategy.on_main_only(
                lambda: evaluate(run, data, device, model=strategy.unwrap(run_model)))
            model.train()
    timer.close_window()
    run.memory = backend.memory()
    run.trained_model = strategy.unwrap(run_model)
    run.optimizer = optimizer


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


@torch.no_grad()
def evaluate(run: Run, data: Datasets, device: torch.device,
             model: Any = None) -> tuple[dict[str, float], list[Any]]:
    """The val split's metrics, and the predictions they were computed from."""
    model = model if model is not None else run.trained_model
    wl = run.workload
    loader = make_loader(run, data.val, data.collate, train=False)
    model.eval()
    predictions: list[Any] = []
    t0 = time.perf_counter()
    for batch in loader:
        batch = to_device(batch, device)
        with run.backend.autocast(run.config.precision):
            predictions.extend(wl.predict(model, batch))
    run.backend.synchronize()
    infer_s = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in wl.evaluate(predictions).items()}
    run.evals.append({"step": run.step, "metrics": metrics, "eval_samples": len(predictions),
                      "inference_s": round(infer_s, 3),
                      "eval_s": round(time.perf_counter() - t0, 3)})
    return metrics, predictions
