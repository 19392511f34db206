"""The Intel Gaudi (HPU) backend, through habana_frameworks.torch (the Gaudi PyTorch bridge).

Modes: lazy (ops accumulate into a graph that `htcore.mark_step()` compiles and runs; the
legacy default), eager, and compile (eager plus `torch.compile(backend="hpu_backend")`).
The bridge reads PT_HPU_LAZY_MODE once, when it is imported, and its default changed across
releases, so environment() always sets it and setup() checks that the loaded bridge agrees.
"""
from __future__ import annotations

import os
import re
from importlib import metadata
from typing import Any

import torch

from harness import Backend, Capabilities, MemoryStats, Probe, UsageError, hookimpl
from harness.memory import host_rss_peak_bytes, reset_host_rss_peak

LAZY_ENV = "PT_HPU_LAZY_MODE"
# Gaudi's documented support matrix: torch.compile(backend="hpu_backend") runs with lazy off.
COMPILE_NEEDS_EAGER = ("torch.compile(backend='hpu_backend') is supported only with lazy mode "
                       "off (PT_HPU_LAZY_MODE=0)")


class HPUBackend(Backend):
    name = "hpu"
    device_type = "hpu"
    description = "Intel Gaudi HPU (habana_frameworks.torch); lazy/eager/compile; hccl"
    capabilities = Capabilities(
        precisions=("fp32", "bf16", "fp16"),
        modes=("lazy", "eager", "compile"),
        default_mode="lazy",
        scaled_precisions=("fp16",),
        dist_backend="hccl",
        deepspeed_accelerator="hpu",
    )

    @classmethod
    def emulate(cls) -> None:
        from backends import emulation

        emulation.install("hpu")

    @classmethod
    def validate(cls, mode: str, precision: str) -> None:
        super().validate(mode, precision)
        preset = os.environ.get(LAZY_ENV)
        if preset is None:
            return
        if mode == "compile" and preset == "1":
            raise UsageError(f"backend hpu: --compile with {LAZY_ENV}=1 in the environment: "
                             f"{COMPILE_NEEDS_EAGER}; unset {LAZY_ENV} or use --lazy")
        if mode == "lazy" and preset == "0":
            raise UsageError(f"backend hpu: --lazy with {LAZY_ENV}=0 in the environment; unset "
                             f"{LAZY_ENV} or choose --eager/--compile")
        if mode == "eager" and preset == "1":
            raise UsageError(f"backend hpu: --eager with {LAZY_ENV}=1 in the environment; unset "
                             f"{LAZY_ENV} or use --lazy")

    @classmethod
    def environment(cls, mode: str) -> dict[str, str]:
        return {LAZY_ENV: "1" if mode == "lazy" else "0"}

    @classmethod
    def probe(cls) -> Probe:
        try:
            import habana_frameworks.torch.core  # noqa: F401 - loads the bridge, registers "hpu"
            from habana_frameworks.torch import hpu as hthpu
        except ModuleNotFoundError:
            return Probe(False, "habana_frameworks is not installed (the Intel Gaudi software "
                                "stack: habana-torch-plugin, from Intel's Gaudi installer/containers)")
        except Exception as exc:  # noqa: BLE001 - a broken driver/library must not crash discovery
            return Probe(False, f"habana_frameworks failed to import ({type(exc).__name__}: {exc})")
        try:
            count = hthpu.device_count() if hthpu.is_available() else 0
        except Exception as exc:  # noqa: BLE001
            return Probe(False, f"habana_frameworks could not query devices: {exc}")
        if count == 0:
            return Probe(False, "habana_frameworks is installed but sees no Gaudi device "
                                "(hl-smi should list one)")
        return Probe(True, device_count=count, device_name=hthpu.get_device_name())

    def prepare_distributed(self) -> None:
        """Register the "hccl" process-group backend (before init_process_group)."""
        import habana_frameworks.torch.distributed.hccl  # noqa: F401

    def setup(self, local_rank: int = 0) -> torch.device:
        import habana_frameworks.torch.core as htcore

        is_lazy = getattr(htcore, "is_lazy", None)
        if is_lazy is not None and bool(is_lazy()) != (self.mode == "lazy"):
            raise UsageError(f"backend hpu: mode {self.mode} asked, but the Gaudi bridge was "
                             f"loaded in {'lazy' if is_lazy() else 'eager'} mode ({LAZY_ENV} is "
                             f"read once, at import; set it before habana_frameworks is imported)")
        # One process per Gaudi card: the bridge picks the card, "hpu" is this process's device.
        self.device = torch.device("hpu")
        return self.device

    def check_precision(self, precision: str) -> None:
        if precision != "fp16":
            return
        from habana_frameworks.torch import hpu as hthpu

        name = hthpu.get_device_name()
        gen = re.search(r"gaudi\s*(\d*)", name, re.IGNORECASE)
        if gen is not None and int(gen.group(1) or 1) < 2:
            raise UsageError(f"backend hpu: fp16 needs Gaudi2 or later (this is {name}); use "
                             f"--precision bf16")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.mode == "compile":
            if self.emulated:  # the real bridge registers "hpu_backend" with dynamo itself
                from backends import emulated_vendor

                emulated_vendor.register_compile_backend()
            return torch.compile(model, backend="hpu_backend")  # type: ignore[return-value]
        return model

    def after_backward(self) -> None:
        if self.mode == "lazy":  # cut the graph after forward+backward (every micro-batch)
            import habana_frameworks.torch.core as htcore

            htcore.mark_step()

    def after_optimizer_step(self) -> None:
        if self.mode == "lazy":  # and after the optimizer's update
            import habana_frameworks.torch.core as htcore

            htcore.mark_step()

    def synchronize(self) -> None:
        import habana_frameworks.torch.core as htcore
        from habana_frameworks.torch import hpu as hthpu

        if self.mode == "lazy":  # queued lazy ops only run once the graph is flushed
            htcore.mark_step()
        hthpu.synchronize()

    def reset_peak_memory(self) -> None:
        from habana_frameworks.torch import hpu as hthpu

        hthpu.reset_peak_memory_stats()
        reset_host_rss_peak()

    def memory(self) -> MemoryStats:
        from habana_frameworks.torch import hpu as hthpu

        stats = hthpu.memory_stats()
        # Gaudi's keys: InUse / MaxInUse (bytes held by tensors), Limit (device capacity).
        # It has no caching-allocator "reserved" figure, so that field stays None.
        return MemoryStats(
            device_peak_allocated_bytes=_int(stats.get("MaxInUse")),
            device_peak_reserved_bytes=None,
            host_peak_rss_bytes=host_rss_peak_bytes(),
            source="habana_frameworks.torch.hpu.memory_stats()['MaxInUse']",
        )

    def describe(self) -> dict[str, Any]:
        import habana_frameworks.torch.core as htcore
        from habana_frameworks.torch import hpu as hthpu

        is_lazy = getattr(htcore, "is_lazy", None)
        return {
            "device_name": hthpu.get_device_name(),
            "device_count": hthpu.device_count(),
            "habana_torch_plugin": _dist_version("habana-torch-plugin"),
            "lazy_mode": bool(is_lazy()) if is_lazy is not None else None,
            LAZY_ENV: os.environ.get(LAZY_ENV),
            "memory_limit_bytes": _int(hthpu.memory_stats().get("Limit")),
            "habana_visible_modules": os.environ.get("HABANA_VISIBLE_MODULES"),
        }


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@hookimpl
def harness_backends() -> list[type[Backend]]:
    return [HPUBackend]
