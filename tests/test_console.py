"""Issue 16 item 2: the console's iter_time/data_time are interval means, the first step's
time is that step's, and the ETA comes from the timed steps' median."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.config import RunConfig
from harness.console import eta, format_line
from harness.runner import execute
from tests.fake_clock import use_fake_clock


def test_logged_iter_time_is_the_interval_mean(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Every 4th step "sleeps" 0.4 s on the fake clock: a last-step value would read 0.4 s or
    # 0 s, the mean 0.1 s.
    use_fake_clock(monkeypatch)
    record = execute(RunConfig(workload="tiny", out=tmp_path / "r", checkpoint=False, eval=False,
                               steps=8, warmup_steps=0, log_interval=4,
                               overrides=("sleep_s=0.4", "sleep_every=4")))
    rows = record["losses"]
    assert [r["step"] for r in rows] == [4, 8]
    for row in rows:
        assert row["iter_time"] == pytest.approx(0.1, abs=1e-3)


def test_first_step_time_is_that_steps(tmp_path: Path) -> None:
    record = execute(RunConfig(workload="tiny", out=tmp_path / "r", checkpoint=False, eval=False,
                               steps=3, warmup_steps=1, log_interval=1))
    assert record["losses"][0]["iter_time"] < 30  # was seconds since the clock's epoch


def _run(step_times: list[float], started_ago: float) -> SimpleNamespace:
    import time

    return SimpleNamespace(total_steps=100, started=time.time() - started_ago,
                           timer=SimpleNamespace(step_times=step_times))


def test_eta_uses_the_median_timed_step_once_there_are_timed_steps() -> None:
    # 10 steps took 100 s (warmup, data writing): elapsed/step would say 10 s per step.
    assert eta(_run([0.5, 0.4, 9.0, 0.5, 0.6], 100.0), 10) == timedelta(seconds=45)
    assert eta(_run([], 100.0), 10) == timedelta(seconds=900)


def test_format_line_shows_the_row() -> None:
    run = _run([0.5], 1.0)
    line = format_line(run, {"step": 10, "epoch": 0, "iter_time": 0.5, "data_time": 0.01,
                             "loss": 1.5, "loss_cls": 1.0})
    assert line.startswith("Epoch 0, iter 10/100, eta 0:00:45, iter_time 0.500s, data_time 0.010s")
