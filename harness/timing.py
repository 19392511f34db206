"""Timing: synchronized windows, warmup discard, FPS and percentiles.

The device is synchronized only at window boundaries (start and end of the timed
window, and at log points where values are read anyway); per-step times in between
are host-side and on asynchronous devices measure dispatch once the queue is full.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class StepTimer:
    """Per-step wall times, data-wait times and sample counts after the warmup."""

    warmup_steps: int
    synchronize: Callable[[], None]
    step_times: list[float] = field(default_factory=list)
    data_times: list[float] = field(default_factory=list)
    samples: int = 0
    window_start: float | None = None
    window_end: float | None = None
    _last: float = 0.0

    def start_step(self) -> None:
        self._last = time.perf_counter()

    def open_window(self) -> None:
        """Called once, right after the last warmup step."""
        self.synchronize()
        self.window_start = time.perf_counter()
        self._last = self.window_start

    def end_step(self, step: int, samples: int, data_time: float) -> float:
        now = time.perf_counter()
        elapsed = now - self._last
        self._last = now
        if self.window_start is not None and step >= self.warmup_steps:
            self.step_times.append(elapsed)
            self.data_times.append(data_time)
            self.samples += samples
        return elapsed

    def close_window(self) -> None:
        if self.window_start is not None and self.window_end is None:
            self.synchronize()
            self.window_end = time.perf_counter()

    def summary(self, world_size: int) -> dict[str, float | int | None]:
        seconds = None
        if self.window_start is not None and self.window_end is not None:
            seconds = self.window_end - self.window_start
        fps = self.samples * world_size / seconds if seconds else None
        compute = [s - d for s, d in zip(self.step_times, self.data_times)]
        return {
            "samples_per_s": fps,
            "window_s": seconds,
            "timed_steps": len(self.step_times),
            "warmup_steps": self.warmup_steps,
            "step_time_s_p50": percentile(self.step_times, 50),
            "step_time_s_p90": percentile(self.step_times, 90),
            "data_time_s_p50": percentile(self.data_times, 50),
            "compute_time_s_p50": percentile(compute, 50),
            "data_wait_fraction": (sum(self.data_times) / sum(self.step_times)
                                   if self.step_times and sum(self.step_times) > 0 else None),
        }
