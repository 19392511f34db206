"""Model size and training FLOPs per sample, for MFU: counted once per run, never fatal.

The count runs torch.utils.flop_counter.FlopCounterMode over one forward+backward of a real
training batch, on a copy of the model (BatchNorm statistics, memory queues and gradients of
the trained model stay untouched) with the host RNG forked (the run's random draws repeat
with or without the count). FlopCounterMode counts matmuls, convolutions and attention, the
operations MFU is defined over; elementwise work is not counted.
"""
from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from harness.api import Backend, Workload


def parameter_count(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _fork_rng(stack: contextlib.ExitStack, device_type: str) -> None:
    """Fork the host RNG, and the device's where its module has the RNG state API."""
    if device_type != "cpu":
        try:
            stack.enter_context(torch.random.fork_rng(device_type=device_type))
            return
        except Exception:  # noqa: BLE001 - devices without get_rng_state: the host's only
            pass
    stack.enter_context(torch.random.fork_rng(devices=[]))


def count_training(host_model: torch.nn.Module, workload: Workload, batch: Any,
                   backend: Backend, device: torch.device, precision: str) -> dict[str, Any]:
    """{"params", "train_flops_per_sample"} and, when the count is null, "train_flops_note".

    `host_model` is the freshly built model before it moves to the device; `batch` is already
    on the device. The forward runs under the run's autocast, as training does (the count
    is the same; workloads that check their autocast see it on).
    """
    info: dict[str, Any] = {"params": parameter_count(host_model), "train_flops_per_sample": None}
    try:
        from torch.utils.flop_counter import FlopCounterMode

        model = copy.deepcopy(host_model).to(device)
        model.train()
        # A shallow copy: workloads that count their own calls keep their count.
        wl = copy.copy(workload)
        with contextlib.ExitStack() as stack:
            _fork_rng(stack, backend.device_type)
            with FlopCounterMode(display=False) as counter:
                with backend.autocast(precision):
                    terms = wl.loss(model, batch)
                sum(terms.values()).backward()  # type: ignore[union-attr]
        backend.synchronize()
        flops = counter.get_total_flops()
        samples = workload.samples(batch)
        if flops <= 0:
            info["train_flops_note"] = "FlopCounterMode counted no matmul/conv/attention op"
        elif samples <= 0:
            info["train_flops_note"] = "the batch holds no samples"
        else:
            info["train_flops_per_sample"] = float(flops) / samples
        del model
    except Exception as exc:  # noqa: BLE001 - reported, never fatal
        info["train_flops_note"] = f"FLOP count failed: {type(exc).__name__}: {exc}"[:300]
    return info
