"""Timing: one synchronized window over training only, and step times that partition it.

The device is synchronized at the window's boundaries and wherever the window pauses
(evaluation, log points and checkpoints, where values are read anyway). Inside the window,
the time between two step ends is that step's time; time spent paused is excluded from both
the window and the steps, and the device work still queued when a pause begins is drained
(synchronized) and charged to the step that queued it. Every pause synchronizes: a pause
that only left host time out (a per-step hook, a stop agreement between ranks) would also
leave out the device work that ran meanwhile, and samples/s would come out high. So the host
time of every step (observer hooks, the per-step all-reduce under --nproc) stays inside the
window, `sum(step_times) == window_s`, and samples/s and the step-time percentiles describe
the same time. Per-step times are host-side: on asynchronous devices a step's time is when
the host got through it, which, once the queue is full, follows the device.

Every time the window measures is read from the timer's `clock` (`time.perf_counter`
unless one is given; `default_clock` is what a timer made without one reads), so tests
drive the timing with a fake clock instead of sleeping.

Per step, the host time also splits into `data_time` (blocked waiting for the next batch
from the loader), `copy_time` (issuing the host->device copies; asynchronous from pinned
memory, waiting from pageable memory) and the rest, `compute_time`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

Clock = Callable[[], float]
# The clock of timers made without one: monotonic, the host's finest resolution.
default_clock: Clock = time.perf_counter


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
    """Per-step wall, data-wait and copy times and sample counts inside the timed window.
    `clock`: seconds, monotonic (default: `default_clock`)."""

    warmup_steps: int
    synchronize: Callable[[], None]
    # Read when the timer is made, so a test may set `default_clock` for a whole run.
    clock: Clock = field(default_factory=lambda: default_clock)
    step_times: list[float] = field(default_factory=list)
    data_times: list[float] = field(default_factory=list)
    copy_times: list[float] = field(default_factory=list)
    samples: int = 0
    window_start: float | None = None
    window_end: float | None = None
    paused_s: float = 0.0
    # Starts when the timer is made (just before the first step), so the first step's
    # iter_time is that step's, not the time since the clock's epoch.
    _last: float = 0.0
    _paused_at: float | None = None

    def __post_init__(self) -> None:
        self._last = self.clock()

    @property
    def is_open(self) -> bool:
        return self.window_start is not None and self.window_end is None

    def open_window(self) -> None:
        """Called once, right after the last warmup step."""
        self.synchronize()
        self.window_start = self.clock()
        self._last = self.window_start

    def end_step(self, step: int, samples: int, data_time: float, copy_time: float = 0.0) -> float:
        """A step ended (host side); returns its time since the previous step end."""
        now = self.clock()
        elapsed = now - self._last
        self._last = now
        if self.is_open and self._paused_at is None and step >= self.warmup_steps:
            self.step_times.append(elapsed)
            self.data_times.append(data_time)
            self.copy_times.append(copy_time)
            self.samples += samples
        return elapsed

    def pause(self) -> None:
        """Stop the clock (evaluation, logging, a checkpoint): queued device work is drained
        first and charged to the last step."""
        if not self.is_open or self._paused_at is not None:
            return
        self.synchronize()
        now = self.clock()
        if self.step_times:
            self.step_times[-1] += now - self._last
        self._paused_at = now

    def resume(self) -> None:
        if self._paused_at is None:
            return
        now = self.clock()
        self.paused_s += now - self._paused_at
        self._paused_at = None
        self._last = now

    def close_window(self) -> None:
        if not self.is_open:
            return
        self.resume()
        self.synchronize()
        self.window_end = self.clock()
        if self.step_times:  # the drained queue belongs to the last step
            self.step_times[-1] += self.window_end - self._last

    def window_seconds(self) -> float | None:
        if self.window_start is None or self.window_end is None:
            return None
        return self.window_end - self.window_start - self.paused_s

    def summary(self, world_size: int) -> dict[str, float | int | None]:
        seconds = self.window_seconds()
        fps = self.samples * world_size / seconds if seconds else None
        compute = [s - d - c for s, d, c in zip(self.step_times, self.data_times, self.copy_times)]
        total = sum(self.step_times)
        return {
            "samples_per_s": fps,
            "window_s": seconds,
            "paused_s": round(self.paused_s, 6),
            "timed_steps": len(self.step_times),
            "warmup_steps": self.warmup_steps,
            "step_time_s_p50": percentile(self.step_times, 50),
            "step_time_s_p90": percentile(self.step_times, 90),
            "data_time_s_p50": percentile(self.data_times, 50),
            "copy_time_s_p50": percentile(self.copy_times, 50),
            "compute_time_s_p50": percentile(compute, 50),
            "data_wait_fraction": sum(self.data_times) / total if total > 0 else None,
        }


class ResumedTimer(StepTimer):
    """The training clock of a run that may be checkpointed and resumed: a StepTimer that
    carries the timed steps of the earlier segments, and a checkpoint piece
    (`state_dict()`/`load_state_dict()`, harness/checkpointing.py).

    Each segment repeats its warmup (excluded); throughput and percentiles are over the
    timed steps of all segments, the window seconds their sum.
    """

    prior_window_s: float = 0.0
    segment_warmup: int = 0
    segments: int = 1

    def start(self, warmup_until: int, warmup: int) -> None:
        """The segment starts now: steps before `warmup_until` are its warmup (`warmup` of
        them), and the first step's time counts from here."""
        self.warmup_steps, self.segment_warmup = warmup_until, warmup
        self._last = self.clock()

    def window_seconds(self) -> float | None:
        own = super().window_seconds()
        if own is None:
            return self.prior_window_s or None
        return own + self.prior_window_s

    def summary(self, world_size: int) -> dict[str, Any]:
        out: dict[str, Any] = dict(super().summary(world_size))
        out["warmup_steps"] = self.segment_warmup
        out["segments"] = self.segments
        return out

    def state_dict(self) -> dict[str, Any]:
        """The timed steps so far, for the next segment (only steps before the checkpoint)."""
        window = 0.0
        if self.window_start is not None:
            end = self.window_end if self.window_end is not None else self.clock()
            paused_now = end - self._paused_at if self._paused_at is not None else 0.0
            window = end - self.window_start - self.paused_s - paused_now
        return {"step_times": list(self.step_times), "data_times": list(self.data_times),
                "copy_times": list(self.copy_times), "samples": self.samples,
                "window_s": window + self.prior_window_s, "paused_s": self.paused_s,
                "segments": self.segments}

    def load_state_dict(self, prior: dict[str, Any]) -> None:
        """Continue from an earlier segment's `state_dict()`."""
        self.step_times = list(prior["step_times"])
        self.data_times = list(prior["data_times"])
        self.copy_times = list(prior["copy_times"])
        self.samples = int(prior["samples"])
        self.prior_window_s = float(prior["window_s"])
        self.paused_s = float(prior["paused_s"])
        self.segments = int(prior["segments"]) + 1

