"""Issue 9 items 1-2: the timed window holds training only, step times partition it, and
the wait for the next batch is measured apart from the host->device copy. Issue 23 item 6:
host time stays inside the window; the timing is tested on a fake clock, not by sleeping."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.runner import execute
from harness.timing import StepTimer
from tests.fake_clock import FakeClock, use_fake_clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return use_fake_clock(monkeypatch)


def run_tiny(tmp_path: Path, name: str, **kw: object) -> dict:
    return execute(RunConfig(workload="tiny", out=tmp_path / name, checkpoint=False, **kw))


def test_evaluation_is_outside_the_window(tmp_path: Path, clock: FakeClock) -> None:
    # Steps take 0.5 s, each evaluation 2 s (on the fake clock).
    common = dict(steps=10, warmup_steps=2, log_interval=5,
                  overrides=("sleep_s=0.5", "eval_sleep_s=2"))
    plain = run_tiny(tmp_path, "plain", **common)
    interval = run_tiny(tmp_path, "interval", eval_interval=4, **common)
    assert [e["step"] for e in interval["evals"]] == [4, 8, 10]
    assert plain["throughput"]["samples_per_s"] == pytest.approx(16 / 0.5)
    assert interval["throughput"]["samples_per_s"] == pytest.approx(16 / 0.5)
    assert interval["throughput"]["step_times_s"] == [0.5] * 8
    # The evaluations at steps 4 and 8 (the one at 10 comes after the window).
    assert interval["throughput"]["paused_s"] == pytest.approx(2 * 2.0)


def test_host_time_between_steps_stays_in_the_window(tmp_path: Path, clock: FakeClock,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What the host does after a step that is not a log step (the stop agreement, under
    --nproc an all-reduce, while the device may still compute) is timed, not left out."""
    from harness.strategies import Strategy

    def slow_agreement(self: Strategy, flag: bool) -> bool:
        clock.sleep(0.1)
        return flag

    monkeypatch.setattr(Strategy, "any_rank", slow_agreement)
    record = run_tiny(tmp_path, "run", steps=10, warmup_steps=2, log_interval=5, eval=False,
                      overrides=("sleep_s=0.5",))
    tp = record["throughput"]
    assert tp["step_times_s"] == pytest.approx([0.6] * 8)
    assert tp["samples_per_s"] == pytest.approx(16 / 0.6)
    assert tp["window_s"] == pytest.approx(8 * 0.6) and tp["paused_s"] == 0.0


def test_fps_and_step_times_describe_the_same_time(tmp_path: Path, clock: FakeClock) -> None:
    record = run_tiny(tmp_path, "run", steps=30, warmup_steps=3, log_interval=4, eval_interval=7,
                      batch_size=16, overrides=("sleep_s=0.005", "sleep_every=3",
                                                "eval_sleep_s=1"))
    tp = record["throughput"]
    assert tp["timed_steps"] == 27 and len(tp["step_times_s"]) == 27
    assert sum(tp["step_times_s"]) == pytest.approx(tp["window_s"], abs=1e-9)
    assert tp["samples_per_s"] == pytest.approx(16 * 27 / sum(tp["step_times_s"]), rel=1e-9)
    assert tp["window_s"] == pytest.approx(9 * 0.005)  # every third step stalls
    assert tp["paused_s"] == pytest.approx(4.0)  # the evaluations at steps 7, 14, 21, 28


def test_pause_drains_the_queue_into_the_last_step() -> None:
    clock = FakeClock()
    syncs: list[float] = []

    def synchronize() -> None:  # the device finishes what is queued: 0.25 s from now
        syncs.append(clock.now)
        clock.sleep(0.25)

    timer = StepTimer(0, synchronize, clock=clock)
    timer.open_window()  # drains the queue before the window: not timed
    clock.sleep(0.1)
    timer.end_step(0, 4, 0.0)
    clock.sleep(0.1)  # host time after the step, before the pause: timed
    timer.pause()
    clock.sleep(3.0)  # logging, evaluation: not timed
    timer.resume()
    clock.sleep(0.1)
    timer.end_step(1, 4, 0.0)
    timer.close_window()
    assert len(syncs) == 3  # open, pause, close
    assert timer.step_times == pytest.approx([0.1 + 0.1 + 0.25, 0.1 + 0.25])
    assert timer.window_seconds() == pytest.approx(sum(timer.step_times))
    assert timer.paused_s == pytest.approx(3.0)
    assert timer.samples == 8


def test_data_wait_is_measured_apart_from_the_copy(tmp_path: Path, clock: FakeClock) -> None:
    record = run_tiny(tmp_path, "run", steps=12, warmup_steps=2, eval=False,
                      overrides=("load_sleep_s=0.05", "copy_sleep_s=0.15"))
    tp = record["throughput"]
    assert tp["data_time_s_p50"] == pytest.approx(0.05)  # the loader's wait, without the copy
    assert tp["copy_time_s_p50"] == pytest.approx(0.15)
    assert tp["step_time_s_p50"] == pytest.approx(0.2)
    assert tp["compute_time_s_p50"] == pytest.approx(0.0, abs=1e-9)
    assert tp["data_wait_fraction"] == pytest.approx(0.25)


def test_loaders_pin_memory_for_the_backends_that_want_it(tmp_path: Path) -> None:
    from backends.cpu import CPUBackend
    from backends.cuda import CUDABackend
    from backends.npu import NPUBackend
    from harness.prepare import PreparedRun
    from harness.strategies import Strategy
    from tests.tiny_workload import TinyConfig, TinyWorkload

    def loader(backend: object) -> object:
        wl = TinyWorkload(TinyConfig())
        prepared = PreparedRun(RunConfig(workload="tiny"), wl, backend, Strategy())  # type: ignore[arg-type]
        prepared.load_data()
        return prepared.loader("train")

    import torch

    # torch >= 2.6 pins for the current accelerator (the device string is deprecated there).
    cuda = loader(CUDABackend())
    assert cuda.pin_memory and cuda.pin_memory_device == (
        "" if hasattr(torch, "accelerator") else "cuda")
    npu = loader(NPUBackend())
    assert npu.pin_memory and npu.pin_memory_device == (
        "" if hasattr(torch, "accelerator") else "npu")
    assert not loader(NPUBackend(emulated=True)).pin_memory  # no pinned allocator emulated
    assert not loader(CPUBackend()).pin_memory
