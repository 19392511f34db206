"""A fake clock for timing tests: a run's timed window reads it, and the tiny workload's
"sleeps" (a step, an evaluation, the loader, the host->device copy) advance it instead of
sleeping, so the timing a test asserts is exact on any machine, however busy."""
from __future__ import annotations

from types import SimpleNamespace

import pytest


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def use_fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Timers made from now on (harness.timing.default_clock) read a FakeClock, which the
    tiny workload's sleeps advance."""
    import harness.timing
    import tests.tiny_workload

    fake = FakeClock()
    monkeypatch.setattr(harness.timing, "default_clock", fake)
    monkeypatch.setattr(tests.tiny_workload, "time", SimpleNamespace(sleep=fake.sleep))
    return fake
