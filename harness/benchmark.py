"""pytest-benchmark support: time one synchronized training step of a workload on a backend.

`pytest workloads --backend npu --benchmark-only` runs workloads/test_benchmarks.py, which
calls `benchmark_training_step(benchmark, name, backend, precision, ...)` for every registered
workload. The step is the runner's own sequence (autocast forward, strategy backward,
after_backward, optimizer step with clipping, after_optimizer_step) built from the harness's
pieces, and ends with `backend.synchronize()` so asynchronous devices are timed for the work
they did, not for the dispatch. Batches are moved to the device before timing: this measures
compute, like the runner's compute_time, not the input pipeline.
"""
from __future__ import annotations

import dataclasses
from itertools import cycle, islice
from pathlib import Path
from typing import Any, Callable

import torch

from harness.config import RunConfig
from harness.prepare import prepare_run
from harness.strategies import Strategy
from harness.training import to_device


@dataclasses.dataclass
class PreparedStep:
    step: Callable[[], None]
    info: dict[str, Any]
    close: Callable[[], None]
    model: Any = None  # the prepared model, for inspection


def prepare_training_step(workload: str, backend: str = "cpu", precision: str = "fp32",
                          mode: str = "", emulate: bool = False, *, scale: str = "smoke",
                          overrides: tuple[str, ...] = (), batch_size: int | None = None,
                          seed: int = 0, cache_dir: Path | None = None,
                          batches: int = 4) -> PreparedStep:
    """Build model, optimizer and a few device-resident batches; return a step closure."""
    config = RunConfig(workload=workload, backend=backend, mode=mode, precision=precision,
                       scale=scale, seed=seed, overrides=tuple(overrides), emulate=emulate,
                       batch_size=batch_size, cache_dir=cache_dir)
    prepared = prepare_run(config, strategy=Strategy())
    wl, dev, strategy = prepared.workload, prepared.backend, prepared.strategy
    device = prepared.device
    assert device is not None
    host_batches = list(islice(cycle(prepared.loader("train")), batches))
    samples = wl.samples(host_batches[0])
    device_batches = cycle([to_device(b, device) for b in host_batches])
    model = wl.build_model().to(device)
    optimizer = wl.build_optimizer(model)
    model = dev.prepare_model(model)
    model, optimizer = strategy.wrap(model, optimizer, config)
    scaler = dev.grad_scaler(precision)
    grad_clip = wl.config.grad_clip
    model.train()

    def step() -> None:
        batch = next(device_batches)
        with dev.autocast(precision):
            terms = wl.loss(model, batch)
        loss: torch.Tensor = sum(terms.values())  # type: ignore[assignment]
        strategy.backward(loss, scaler)
        dev.after_backward()
        strategy.optimizer_step(model, optimizer, scaler, grad_clip)
        dev.after_optimizer_step()
        dev.synchronize()  # time the device's work, not the host's dispatch

    info = {"workload": workload, "backend": backend, "precision": precision,
            "mode": dev.mode, "device": str(device), "emulated": emulate,
            "samples_per_step": samples, "scale": scale}
    return PreparedStep(step, info, prepared.close, model)


def benchmark_training_step(benchmark: Any, workload_name: str, backend: str = "cpu",
                            precision: str = "fp32", mode: str = "", emulate: bool = False,
                            *, rounds: int = 10, warmup_rounds: int = 2, **kwargs: Any) -> Any:
    """Time one training step with pytest-benchmark's `benchmark` fixture.

    pedantic mode with fixed rounds: a training step mutates the model, and calibration
    would run an unknown number of steps on slow workloads. Warmup rounds absorb lazy
    initialisation (allocator, compile, graph capture). Samples/s per round can be derived
    from `extra_info["samples_per_step"]`.
    """
    prepared = prepare_training_step(workload_name, backend, precision, mode, emulate, **kwargs)
    benchmark.extra_info.update(prepared.info)
    try:
        return benchmark.pedantic(prepared.step, rounds=rounds, warmup_rounds=warmup_rounds,
                                  iterations=1)
    finally:
        prepared.close()
