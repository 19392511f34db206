"""Built-in observer: seed-style console lines, a progress bar on a terminal, log.jsonl."""
from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from harness import hookimpl

if TYPE_CHECKING:
    from harness.api import Run

_BAR_WIDTH = 30


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def eta(run: Run, step: int) -> timedelta:
    """Remaining steps x the median timed step once the window has steps (warmup, graph
    compilation and data writing would inflate a mean over the elapsed time many-fold),
    else the elapsed time per step so far."""
    remaining = max(run.total_steps - step, 0)
    timer = getattr(run, "timer", None)
    timed = sorted(timer.step_times) if timer is not None else []
    if timed:
        per_step = timed[len(timed) // 2]
    else:
        per_step = (time.time() - run.started) / max(step, 1)
    return timedelta(seconds=int(per_step * remaining))


def format_line(run: Run, row: dict[str, Any]) -> str:
    """`Epoch 0, iter 174/5619, eta 0:12:06, iter_time 0.37s, loss 5.229, loss_cls 0.127 ...`

    iter_time and data_time are means over the steps since the previous line."""
    eta_left = eta(run, row["step"])
    skip = {"step", "epoch", "iter_time", "data_time"}
    parts = [f"Epoch {row['epoch']}", f"iter {row['step']}/{run.total_steps}", f"eta {eta_left}",
             f"iter_time {row['iter_time']:.3f}s", f"data_time {row['data_time']:.3f}s"]
    parts += [f"{k} {_fmt(v)}" for k, v in row.items() if k not in skip]
    return ", ".join(parts)


def _clock(seconds: float) -> str:
    """h:mm:ss as the seed prints times; sub-10 s steps keep milliseconds (0:00:00.512)."""
    if seconds >= 10:
        return str(timedelta(seconds=round(seconds)))
    whole = int(seconds)
    return f"{timedelta(seconds=whole)}.{int(round((seconds - whole) * 1000)):03d}"


def format_seed_line(run: Run, row: dict[str, Any]) -> str:
    """A workload with `console_style = "seed"` (the OpenLane-V2 seed's DeepSpeed script):
    `Epoch 0, idx 349 / 11239, iter 174 / 5619, bs 2 *acc 2: 4, eta 2 days, 9:12:06,
    iter_time 0:00:37, loss 5.2290, lc_loss_cls 0.1268, ...`: idx counts micro-batches and iter
    optimizer steps, both 0-based within the epoch, as the seed's loop does."""
    step, acc = row["step"], run.config.grad_accum
    per_epoch = max(run.steps_per_epoch, 1)
    eta_left = eta(run, step)
    bs = int(getattr(run.workload.config, "batch_size", 1) or 1)
    world = run.strategy.world_size
    batch = f"bs {bs} *acc {acc}" + (f" *world {world}" if world > 1 else "")
    parts = [f"Epoch {row['epoch']}", f"idx {(step * acc - 1) % (per_epoch * acc)} / "
             f"{per_epoch * acc}", f"iter {(step - 1) % per_epoch} / {per_epoch}",
             f"{batch}: {bs * acc * world}", f"eta {eta_left}", f"iter_time {_clock(row['iter_time'])}",
             f"loss {row['loss']:.4f}"]
    skip = {"step", "epoch", "iter_time", "data_time", "loss"}
    parts += [f"{k} {_fmt(v)}" for k, v in row.items() if k not in skip]
    return ", ".join(parts)


class ConsoleObserver:
    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._jsonl: Any = None
        self._bar_shown = False

    def _clear_bar(self) -> None:
        if self._bar_shown:
            sys.stdout.write("\r" + " " * (_BAR_WIDTH + 40) + "\r")
            self._bar_shown = False

    def harness_run_start(self, run: Run) -> None:
        if not run.strategy.is_main:
            return
        self._jsonl = open(run.out_dir / "log.jsonl", "a")
        print(f"[harness] {run.config.workload} ({run.config.scale}) on {run.backend.name}"
              f"/{run.backend.mode}/{run.config.precision}"
              f"{' (emulated)' if run.backend.emulated else ''}: {run.total_steps} steps "
              f"({run.steps_per_epoch}/epoch), out {run.out_dir}", flush=True)

    def harness_step_end(self, run: Run, step: int) -> None:
        if not run.strategy.is_main:
            return
        row = run.last_log
        if row is not None:
            self._clear_bar()
            seed_style = getattr(run.workload, "console_style", "") == "seed"
            print((format_seed_line if seed_style else format_line)(run, row), flush=True)
            if self._jsonl:
                self._jsonl.write(json.dumps(row) + "\n")
                self._jsonl.flush()
        if self.tty:
            filled = int(_BAR_WIDTH * step / max(run.total_steps, 1))
            sys.stdout.write(f"\r[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] "
                             f"{step}/{run.total_steps}")
            sys.stdout.flush()
            self._bar_shown = True

    def harness_eval_end(self, run: Run, metrics: dict[str, float]) -> None:
        self._clear_bar()
        print("[harness] eval: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
              flush=True)

    def harness_run_end(self, run: Run, record: dict[str, Any]) -> None:
        self._clear_bar()
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if not run.strategy.is_main:
            return
        tp = record.get("throughput") or {}
        fps = tp.get("samples_per_s")
        mem = (record.get("memory") or {}).get("device_peak_allocated_bytes")
        print(f"[harness] status {record['status']}"
              + (f", {fps:.2f} samples/s" if fps else "")
              + (f", peak memory {mem / 2**20:.0f} MiB" if mem else "")
              + (" (emulated device: speed and memory not meaningful)"
                 if run.backend.emulated and (fps or mem) else "")
              + f", {record['duration_s']:.0f}s, record {run.record_path or run.out_dir / 'record.json'}",
              flush=True)


_OBSERVER = ConsoleObserver()


@hookimpl
def harness_run_start(run: Run) -> None:
    _OBSERVER.harness_run_start(run)


@hookimpl
def harness_step_end(run: Run, step: int) -> None:
    _OBSERVER.harness_step_end(run, step)


@hookimpl
def harness_eval_end(run: Run, metrics: dict[str, float]) -> None:
    _OBSERVER.harness_eval_end(run, metrics)


@hookimpl
def harness_run_end(run: Run, record: dict[str, Any]) -> None:
    _OBSERVER.harness_run_end(run, record)
