"""The CUDA backend: NVIDIA GPUs through torch.cuda, nccl for collectives.

fp32/bf16/fp16 autocast (fp16 with a GradScaler), eager or torch.compile (inductor), peak
allocated/reserved memory from the caching allocator, nvtx ranges for Nsight Systems.
"""
from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from typing import Any, Callable

import torch

from harness import Backend, Capabilities, MemoryStats, Probe, UsageError, hookimpl
from harness.memory import host_rss_peak_bytes, reset_host_rss_peak


class CUDABackend(Backend):
    name = "cuda"
    device_type = "cuda"
    description = "NVIDIA GPU (torch.cuda); nccl for multi-GPU"
    capabilities = Capabilities(
        precisions=("fp32", "bf16", "fp16"),
        modes=("eager", "compile"),
        default_mode="eager",
        scaled_precisions=("fp16",),
        dist_backend="nccl",
        pin_memory=True,
        deepspeed_accelerator="cuda",
        why_not={
            "lazy": "lazy mode is Gaudi's graph accumulation (PT_HPU_LAZY_MODE); CUDA runs "
                    "eagerly, or use --compile for torch.compile (inductor)",
        },
    )

    @classmethod
    def probe(cls) -> Probe:
        if not torch.backends.cuda.is_built():
            return Probe(False, f"this torch build ({torch.__version__}) has no CUDA support; "
                                "install a CUDA build of torch")
        try:
            count = torch.cuda.device_count()
        except Exception as exc:  # noqa: BLE001 - a broken driver must not crash discovery
            return Probe(False, f"CUDA runtime error while counting devices: {exc}")
        if count == 0:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else \
                " (is the NVIDIA driver loaded? nvidia-smi should list a GPU)"
            return Probe(False, f"no CUDA device visible{hint}")
        return Probe(True, device_count=count, device_name=torch.cuda.get_device_name(0))

    def setup(self, local_rank: int = 0) -> torch.device:
        torch.cuda.set_device(local_rank)
        self.device = torch.device("cuda", local_rank)
        return self.device

    def deterministic(self) -> None:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        # cuBLAS reads this when its handle is created (first matmul), which is still ahead.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    def check_precision(self, precision: str) -> None:
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(self.device)
            raise UsageError(f"backend cuda: {name} has no bf16 support (compute capability "
                             f"8.0+ needed); use --precision fp16")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.mode == "compile":
            return torch.compile(model)  # type: ignore[return-value]
        return model

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)
        reset_host_rss_peak()

    def memory(self) -> MemoryStats:
        return MemoryStats(
            device_peak_allocated_bytes=torch.cuda.max_memory_allocated(self.device),
            device_peak_reserved_bytes=torch.cuda.max_memory_reserved(self.device),
            host_peak_rss_bytes=host_rss_peak_bytes(),
            source="torch.cuda.max_memory_allocated/max_memory_reserved",
        )

    def trace(self, name: str) -> contextlib.AbstractContextManager[Any]:
        return _range_factory()(name)

    def describe(self) -> dict[str, Any]:
        index = self.device.index if self.device is not None else 0
        props = torch.cuda.get_device_properties(index)
        return {
            "device_name": props.name,
            "device_count": torch.cuda.device_count(),
            "compute_capability": f"{props.major}.{props.minor}",
            "total_memory_bytes": props.total_memory,
            "driver_version": _driver_version(),
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }


@functools.lru_cache(maxsize=1)
def _range_factory() -> Callable[[str], contextlib.AbstractContextManager[Any]]:
    """nvtx ranges for Nsight Systems: the nvtx package (a no-op unless a profiler is
    attached), else torch's nvtx bindings, else torch.profiler's record_function."""
    try:
        import nvtx

        return lambda name: nvtx.annotate(name)
    except ImportError:
        pass
    try:
        torch.cuda.nvtx.range_push("probe")
        torch.cuda.nvtx.range_pop()
        return torch.cuda.nvtx.range
    except Exception:  # noqa: BLE001 - torch built without nvtx
        return torch.autograd.profiler.record_function


def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - optional: fall back to nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


@hookimpl
def harness_backends() -> list[type[Backend]]:
    return [CUDABackend]
