"""The OpenLane-V2 seed's console line (its DeepSpeed training script), which the workload
gives through `Workload.console_line`."""
from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from harness.console import eta, format_value

if TYPE_CHECKING:
    from harness.api import Run


def _clock(seconds: float) -> str:
    """h:mm:ss as the seed prints times; sub-10 s steps keep milliseconds (0:00:00.512)."""
    if seconds >= 10:
        return str(timedelta(seconds=round(seconds)))
    whole = int(seconds)
    return f"{timedelta(seconds=whole)}.{int(round((seconds - whole) * 1000)):03d}"


def format_seed_line(run: Run, row: dict[str, Any]) -> str:
    """`Epoch 0, idx 349 / 11239, iter 174 / 5619, bs 2 *acc 2: 4, eta 2 days, 9:12:06,
    iter_time 0:00:37, loss 5.2290, lc_loss_cls 0.1268, ...`: idx counts micro-batches and iter
    optimizer steps, both 0-based within the epoch, as the seed's loop does."""
    step, acc = row["step"], run.config.grad_accum
    per_epoch = max(run.steps_per_epoch, 1)
    eta_left = eta(run, step)
    bs = int(run.workload.config.batch_size or 1)
    world = run.strategy.world_size
    batch = f"bs {bs} *acc {acc}" + (f" *world {world}" if world > 1 else "")
    parts = [f"Epoch {row['epoch']}", f"idx {(step * acc - 1) % (per_epoch * acc)} / "
             f"{per_epoch * acc}", f"iter {(step - 1) % per_epoch} / {per_epoch}",
             f"{batch}: {bs * acc * world}", f"eta {eta_left}", f"iter_time {_clock(row['iter_time'])}",
             f"loss {row['loss']:.4f}"]
    skip = {"step", "epoch", "iter_time", "data_time", "loss"}
    parts += [f"{k} {format_value(v)}" for k, v in row.items() if k not in skip]
    return ", ".join(parts)
