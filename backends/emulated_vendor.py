"""Stand-ins for the vendor side of the emulated device (see backends/emulation.py).

The `torch.npu` / `torch.hpu` device module the emulated PrivateUse1 device registers, and
small stand-ins for `torch_npu` and `habana_frameworks.torch` put into sys.modules, so that
backends/npu.py and backends/hpu.py run unchanged. `mark_step` counts its calls by caller.
"""
from __future__ import annotations

import functools
import os
import sys
import types
from typing import Any, Callable

import torch

from backends.emulation_state import STATS
from backends.emulation_state import device_name as _name


class _Stream:
    """What `current_stream()` returns: enough for APIs that take a stream argument."""

    def synchronize(self) -> None:
        synchronize()


def synchronize(device: Any = None) -> None:
    STATS["synchronize"] += 1  # host kernels are synchronous: nothing is ever queued


def _memory_stats(device: Any = None) -> dict[str, int]:
    mem = dict(STATS["memory"])
    if _name() == "hpu":  # Gaudi's keys
        return {**mem, "Limit": 0, "ActiveAllocs": mem["NumAllocs"] - mem["NumFrees"]}
    return {"allocated_bytes.all.current": mem["InUse"], "allocated_bytes.all.peak": mem["MaxInUse"],
            "reserved_bytes.all.current": mem["InUse"], "reserved_bytes.all.peak": mem["MaxInUse"]}


def _reset_peak(device: Any = None) -> None:
    STATS["memory"]["MaxInUse"] = STATS["memory"]["InUse"]


def device_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(f"torch.{name}", f"CPU-emulated torch.{name} (harness --emulate)")
    peak: Callable[..., int] = lambda device=None: STATS["memory"]["MaxInUse"]  # noqa: E731
    current: Callable[..., int] = lambda device=None: STATS["memory"]["InUse"]  # noqa: E731
    funcs: dict[str, Any] = {
        "__emulated__": True,
        "is_available": lambda: True, "is_initialized": lambda: True, "init": lambda: None,
        "_is_in_bad_fork": lambda: False, "_lazy_init": lambda: None,
        "device_count": lambda: 1, "current_device": lambda: 0, "set_device": _set_device,
        "synchronize": synchronize, "current_stream": lambda device=None: _Stream(),
        # Ops run on the host, so the CPU generator (seeded by torch.manual_seed) drives them.
        "manual_seed": lambda seed: None, "manual_seed_all": lambda seed: None,
        "seed": lambda: None, "seed_all": lambda: None, "initial_seed": torch.initial_seed,
        "get_amp_supported_dtype": lambda: [torch.float16, torch.bfloat16],
        "is_bf16_supported": lambda *a, **k: True,
        "get_device_name": lambda device=None: _device_name(name),
        "memory_stats": _memory_stats, "reset_peak_memory_stats": _reset_peak,
        "memory_allocated": current, "memory_reserved": current,
        "max_memory_allocated": peak, "max_memory_reserved": peak,
        "empty_cache": lambda: None,
    }
    for key, value in funcs.items():
        setattr(mod, key, value)
    return mod


def _device_name(name: str) -> str:
    return {"npu": "Ascend910B (emulated on CPU)", "hpu": "GAUDI2 (emulated on CPU)"}[name]


def _set_device(device: Any) -> None:
    index = device if isinstance(device, int) else torch.device(device).index or 0
    if index != 0:
        raise RuntimeError(f"emulated {_name()} has one device (index 0), asked for {index}")


def _module(qualname: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(qualname, "CPU emulation stand-in (harness --emulate), not the vendor's")
    mod.__emulated__ = True  # type: ignore[attr-defined]
    for key, value in attrs.items():
        setattr(mod, key, value)
    sys.modules[qualname] = mod
    return mod


class Mstx:
    """torch_npu.npu.mstx: profiler ranges (ids only; no profiler runs here)."""

    @staticmethod
    def mark(message: str = "") -> None:
        pass

    @staticmethod
    def range_start(message: str, stream: Any = None) -> int:
        STATS["mstx_ranges"] += 1
        return int(STATS["mstx_ranges"])

    @staticmethod
    def range_end(range_id: int) -> None:
        pass


def install_torch_npu(device_mod: types.ModuleType) -> None:
    class GradScaler(torch.amp.GradScaler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__("npu", *args, **kwargs)

    amp = _module("torch_npu.npu.amp", GradScaler=GradScaler)
    npu = _module("torch_npu.npu", amp=amp, mstx=Mstx, **{
        k: v for k, v in vars(device_mod).items() if not k.startswith("__")})
    _module("torch_npu", npu=npu, __version__="0.0+emulated")


def mark_step(device_str: str = "", sync: bool = False) -> None:
    """habana_frameworks.torch.core.mark_step stand-in: counts calls, by calling function."""
    caller = sys._getframe(1).f_code.co_name
    counts = STATS["mark_step"]
    counts["total"] += 1
    counts["by_caller"][caller] = counts["by_caller"].get(caller, 0) + 1


@functools.lru_cache(maxsize=1)
def _is_lazy() -> bool:
    # Like the bridge: PT_HPU_LAZY_MODE is read once (here: at first use, after the harness set it).
    return os.environ.get("PT_HPU_LAZY_MODE", "1") == "1"


def install_habana(device_mod: types.ModuleType) -> None:
    core = _module("habana_frameworks.torch.core", mark_step=mark_step, is_lazy=_is_lazy)
    hpu = _module("habana_frameworks.torch.hpu", **{
        k: v for k, v in vars(device_mod).items() if not k.startswith("__")})
    hccl = _module("habana_frameworks.torch.distributed.hccl")
    dist = _module("habana_frameworks.torch.distributed", hccl=hccl)
    hpu_torch = _module("habana_frameworks.torch", core=core, hpu=hpu, distributed=dist,
                        __version__="0.0+emulated")
    _module("habana_frameworks", torch=hpu_torch)


def register_compile_backend() -> None:
    """Make torch.compile(backend="hpu_backend") resolve (Gaudi registers it; here: eager)."""
    from torch._dynamo import list_backends, register_backend

    if "hpu_backend" not in list_backends(exclude_tags=()):
        register_backend(name="hpu_backend")(lambda gm, example_inputs: gm.forward)
