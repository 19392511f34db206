"""Issue 9 items 1-2: the timed window holds training only, step times partition it, and
the wait for the next batch is measured apart from the host->device copy."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.runner import execute
from harness.timing import StepTimer


def run_tiny(tmp_path: Path, name: str, **kw: object) -> dict:
    return execute(RunConfig(workload="tiny", out=tmp_path / name, checkpoint=False, **kw))


def test_evaluation_is_outside_the_window(tmp_path: Path) -> None:
    # Steps sleep 0.5 s, so the step time is the sleep, not CPU contention on a shared machine
    # (2 cores, many processes: scheduling delays of 0.1-0.2 s per step were seen); each
    # evaluation sleeps 2 s.
    common = dict(steps=10, warmup_steps=2, log_interval=5,
                  overrides=("sleep_s=0.5", "eval_sleep_s=2"))
    plain = run_tiny(tmp_path, "plain", **common)
    interval = run_tiny(tmp_path, "interval", eval_interval=4, **common)
    assert [e["step"] for e in interval["evals"]] == [4, 8, 10]
    fps_plain = plain["throughput"]["samples_per_s"]
    fps_interval = interval["throughput"]["samples_per_s"]
    assert fps_interval == pytest.approx(fps_plain, rel=0.10)
    assert interval["throughput"]["paused_s"] >= 2 * 2.0


def test_fps_and_step_times_describe_the_same_time(tmp_path: Path) -> None:
    record = run_tiny(tmp_path, "run", steps=30, warmup_steps=3, log_interval=4, eval_interval=7,
                      batch_size=16, overrides=("sleep_s=0.005",))
    tp = record["throughput"]
    assert tp["timed_steps"] == 27 and len(tp["step_times_s"]) == 27
    assert sum(tp["step_times_s"]) == pytest.approx(tp["window_s"], abs=1e-4)
    assert tp["samples_per_s"] == pytest.approx(16 * 27 / sum(tp["step_times_s"]), rel=1e-3)


def test_pause_drains_the_queue_into_the_last_step() -> None:
    syncs: list[int] = []
    timer = StepTimer(0, lambda: syncs.append(1))
    timer.open_window()
    timer.end_step(0, 4, 0.0)
    timer.pause()
    timer.resume()
    timer.end_step(1, 4, 0.0)
    timer.close_window()
    assert len(syncs) == 3  # open, pause, close
    assert sum(timer.step_times) == pytest.approx(timer.window_seconds(), abs=1e-9)
    assert timer.samples == 8


def test_data_wait_is_measured_apart_from_the_copy(tmp_path: Path) -> None:
    record = run_tiny(tmp_path, "run", steps=12, warmup_steps=2, eval=False,
                      overrides=("load_sleep_s=0.05", "copy_sleep_s=0.15"))
    tp = record["throughput"]
    assert 0.05 <= tp["data_time_s_p50"] < 0.15  # the loader's wait, without the copy
    assert tp["copy_time_s_p50"] >= 0.15
    compute = tp["step_time_s_p50"] - tp["data_time_s_p50"] - tp["copy_time_s_p50"]
    assert tp["compute_time_s_p50"] == pytest.approx(compute, abs=0.05)
    steps = sum(tp["step_times_s"])
    assert tp["data_wait_fraction"] == pytest.approx(tp["data_time_s_p50"] * 10 / steps, rel=0.3)


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
