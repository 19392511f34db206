"""The CPU backend: fp32 and bf16 autocast, host RSS as memory, gloo for collectives."""
from __future__ import annotations

import os
import platform
from typing import Any

import torch

from harness import Backend, Capabilities, MemoryStats, Probe, hookimpl
from harness.memory import host_rss_peak_bytes, reset_host_rss_peak


class CPUBackend(Backend):
    name = "cpu"
    device_type = "cpu"
    description = "host CPU (always available)"
    capabilities = Capabilities(
        precisions=("fp32", "bf16"),
        modes=("eager", "compile"),
        default_mode="eager",
        dist_backend="gloo",
        deepspeed_accelerator="cpu",
        why_not={
            "fp16": "CPU autocast has no fp16 GradScaler path and no fp16 speedup; use bf16",
            "lazy": "lazy mode is Gaudi's (PT_HPU_LAZY_MODE); use --backend hpu --lazy",
        },
    )

    @classmethod
    def probe(cls) -> Probe:
        return Probe(True, device_count=1, device_name=platform.processor() or platform.machine())

    def setup(self, local_rank: int = 0) -> torch.device:
        self.device = torch.device("cpu")
        return self.device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.mode == "compile":
            return torch.compile(model)  # type: ignore[return-value]
        return model

    def synchronize(self) -> None:
        # CPU kernels run synchronously in the calling thread; nothing is queued.
        pass

    def reset_peak_memory(self) -> None:
        reset_host_rss_peak()

    def memory(self) -> MemoryStats:
        # The CPU's "device memory" is host memory: report the sampled host RSS peak.
        peak = host_rss_peak_bytes()
        return MemoryStats(device_peak_allocated_bytes=peak, device_peak_reserved_bytes=peak,
                           host_peak_rss_bytes=peak, source="host_rss")

    def describe(self) -> dict[str, Any]:
        return {
            "device_name": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(),
        }


@hookimpl
def harness_backends() -> list[type[Backend]]:
    return [CPUBackend]
