"""The Ascend NPU backend, through torch_npu (Ascend Extension for PyTorch) and CANN.

torch_npu is imported lazily, inside methods: it needs CANN's shared libraries, and without
them the import fails (libhccl.so...). Since torch 2.5, an installed torch_npu is also
autoloaded by `import torch` through the `torch.backends` entry point, so a torch_npu whose
CANN is broken can break `import torch` itself; `TORCH_DEVICE_BACKEND_AUTOLOAD=0` turns the
autoload off, and probe() then imports torch_npu explicitly and reports what failed. This
backend cannot set that variable for the current process: torch is already imported.

Ops torch_npu lacks run on the CPU, with a one-time warning per op ("... will fall back to
run on the CPU"); setup() installs a warnings hook that records those op names for the run
record (`fallback_report()`), and close() removes it.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import Any, Iterator

import torch

from harness import Backend, Capabilities, MemoryStats, Probe, UsageError, hookimpl
from harness.memory import host_rss_peak_bytes, reset_host_rss_peak

_FALLBACK = re.compile(r"operator '([^']+)' is not currently supported on the NPU backend "
                       r"and will fall back to run on the CPU")


class _FallbackCapture:
    """Collects op names from torch_npu's CPU-fallback warnings, showing each one once."""

    def __init__(self) -> None:
        self.ops: list[str] = []
        self._orig_show: Any = None
        self._filter: Any = None

    def install(self) -> None:
        self._orig_show = warnings.showwarning
        warnings.showwarning = self._show
        # "always": the default filter would hide a second op warned from the same line.
        warnings.filterwarnings("always", message=r".*will fall back to run on the CPU")
        self._filter = warnings.filters[0]

    def _show(self, message: Any, category: Any, filename: str, lineno: int,
              file: Any = None, line: str | None = None) -> None:
        found = _FALLBACK.search(str(message))
        if found:
            if found.group(1) in self.ops:
                return
            self.ops.append(found.group(1))
        self._orig_show(message, category, filename, lineno, file, line)

    def remove(self) -> None:
        if warnings.showwarning == self._show:
            warnings.showwarning = self._orig_show
        with contextlib.suppress(ValueError):
            warnings.filters.remove(self._filter)
        mutated = getattr(warnings, "_filters_mutated", None)  # drop cached "already warned"
        if mutated is not None:
            mutated()


class NPUBackend(Backend):
    name = "npu"
    device_type = "npu"
    description = "Huawei Ascend NPU (torch_npu + CANN); hccl for multi-device"
    capabilities = Capabilities(
        precisions=("fp32", "bf16", "fp16"),
        modes=("eager",),
        default_mode="eager",
        scaled_precisions=("fp16",),
        dist_backend="hccl",
        pin_memory=True,  # torch_npu pins for pin_memory_device="npu"
        deepspeed_accelerator="npu",
        why_not={
            "lazy": "lazy mode is Gaudi's graph accumulation (PT_HPU_LAZY_MODE); torch_npu runs "
                    "eagerly",
            "compile": "torch.compile on Ascend goes through torchair/npugraph_ex, which this "
                       "backend does not drive yet; run eagerly",
        },
    )

    def __init__(self, mode: str = "", emulated: bool = False) -> None:
        super().__init__(mode, emulated)
        self._capture = _FallbackCapture()

    @classmethod
    def emulate(cls) -> None:
        from backends import emulation

        emulation.install("npu")

    @classmethod
    def probe(cls) -> Probe:
        try:
            import torch_npu  # noqa: F401 - registers torch.npu and the "npu" device
        except ModuleNotFoundError:
            return Probe(False, "torch_npu is not installed (pip install torch-npu; needs "
                                "Ascend CANN)")
        except Exception as exc:  # noqa: BLE001 - OSError for a missing CANN library, etc.
            return Probe(False, f"torch_npu failed to import ({type(exc).__name__}: {exc}); is "
                                "Ascend CANN installed and its set_env.sh sourced?")
        try:
            count = torch.npu.device_count() if torch.npu.is_available() else 0
        except Exception as exc:  # noqa: BLE001 - driver errors
            return Probe(False, f"torch_npu could not query devices: {exc}")
        if count == 0:
            visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
            hint = f" (ASCEND_RT_VISIBLE_DEVICES={visible!r})" if visible is not None else \
                " (is the Ascend driver loaded? npu-smi info should list a device)"
            return Probe(False, f"torch_npu is installed but sees no NPU{hint}")
        return Probe(True, device_count=count, device_name=torch.npu.get_device_name(0))

    def setup(self, local_rank: int = 0) -> torch.device:
        torch.npu.set_device(local_rank)
        self.device = torch.device("npu", local_rank)
        self._capture.install()
        return self.device

    def check_precision(self, precision: str) -> None:
        if precision == "bf16" and not torch.npu.is_bf16_supported():
            raise UsageError(f"backend npu: {torch.npu.get_device_name(self.device)} has no bf16 "
                             f"support (Atlas A2 / 910B or later); use --precision fp16")

    def grad_scaler(self, precision: str) -> Any | None:
        if precision not in self.capabilities.scaled_precisions:
            return None
        import torch_npu

        # The NPU form of torch.cuda.amp.GradScaler in Ascend's API tables.
        return torch_npu.npu.amp.GradScaler()

    def synchronize(self) -> None:
        torch.npu.synchronize()

    def reset_peak_memory(self) -> None:
        # torch.npu's own functions: torch.accelerator's memory calls fail with torch_npu.
        torch.npu.reset_peak_memory_stats(self.device)
        reset_host_rss_peak()

    def memory(self) -> MemoryStats:
        return MemoryStats(
            device_peak_allocated_bytes=torch.npu.max_memory_allocated(self.device),
            device_peak_reserved_bytes=torch.npu.max_memory_reserved(self.device),
            host_peak_rss_bytes=host_rss_peak_bytes(),
            source="torch.npu.max_memory_allocated/max_memory_reserved",
        )

    @contextlib.contextmanager
    def trace(self, name: str) -> Iterator[None]:
        import torch_npu

        mstx = getattr(torch_npu.npu, "mstx", None)
        range_id = 0
        if mstx is not None:
            # With a stream the range marks host and device timelines (msprof/Ascend profiler).
            range_id = mstx.range_start(name, torch.npu.current_stream())
        try:
            with torch.autograd.profiler.record_function(name):
                yield
        finally:
            if range_id and mstx is not None:  # 0 means range_start failed
                mstx.range_end(range_id)

    def describe(self) -> dict[str, Any]:
        import torch_npu

        index = self.device.index if self.device is not None else 0
        return {
            "device_name": torch.npu.get_device_name(index),
            "device_count": torch.npu.device_count(),
            "torch_npu": getattr(torch_npu, "__version__", None),
            "ascend_rt_visible_devices": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"),
            "ascend_home": os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME"),
            "bf16_supported": bool(torch.npu.is_bf16_supported()),
        }

    def fallback_report(self) -> list[str]:
        return list(self._capture.ops)

    def close(self) -> None:
        self._capture.remove()


@hookimpl
def harness_backends() -> list[type[Backend]]:
    return [NPUBackend]
