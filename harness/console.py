"""Built-in observer: seed-style console lines, a progress bar on a terminal, log.jsonl.

A workload whose original scripts print another line gives it through
`Workload.console_line` (the OpenLane-V2 seed's, for one); the helpers here (`eta`,
`format_value`) are for such lines too."""
from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from harness import hookimpl

if TYPE_CHECKING:
    from harness.api import Run
    from harness.records import Record

_BAR_WIDTH = 30


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def eta(run: Run, step: int) -> timedelta:
    """Remaining steps x the median timed step once the window has steps (warmup, graph
    compilation and data writing would inflate a mean over the elapsed time many-fold),
    else the elapsed time per step so far."""
    remaining = max(run.total_steps - step, 0)
    timed = sorted(run.timer.step_times) if run.timer is not None else []
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
    parts += [f"{k} {format_value(v)}" for k, v in row.items() if k not in skip]
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
            line = run.workload.console_line(run, row)
            print(line if line is not None else format_line(run, row), flush=True)
            if self._jsonl:
                try:
                    self._jsonl.write(json.dumps(row) + "\n")
                    self._jsonl.flush()
                except OSError as exc:  # a full disk: name the file, not the plugin
                    raise OSError(exc.errno, exc.strerror, self._jsonl.name) from exc
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

    def harness_run_end(self, run: Run, record: Record) -> None:
        self._clear_bar()
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if not run.strategy.is_main:
            return
        fps = record.throughput.get("samples_per_s")
        mem = record.memory.get("device_peak_allocated_bytes")
        print(f"[harness] status {record.status}"
              + (f", {fps:.2f} samples/s" if fps else "")
              + (f", peak memory {mem / 2**20:.0f} MiB" if mem else "")
              + (" (emulated device: speed and memory not meaningful)"
                 if run.backend.emulated and (fps or mem) else "")
              + f", {record.duration_s or 0:.0f}s, record "
              + f"{run.record_path or run.out_dir / 'record.json'}",
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
def harness_run_end(run: Run, record: Record) -> None:
    _OBSERVER.harness_run_end(run, record)
