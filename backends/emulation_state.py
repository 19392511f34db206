"""The CPU-emulated device's shared state: its name and its counters (a leaf module).

backends/emulation.py (the PrivateUse1 kernels) and backends/emulated_vendor.py (the vendor
module stand-ins) both read and update this; neither imports the other's internals for it.
"""
from __future__ import annotations

from typing import Any

# name: the emulated device type ("npu"/"hpu") once installed; libs: torch.library handles
# kept alive; fallback_warned: ops already warned about.
STATE: dict[str, Any] = {"name": None, "libs": []}
STATS: dict[str, Any] = {
    "device": None, "ops": {}, "autocast_casts": {}, "mark_step": {"total": 0, "by_caller": {}},
    "synchronize": 0, "memory": {"InUse": 0, "MaxInUse": 0, "NumAllocs": 0, "NumFrees": 0},
    "mstx_ranges": 0,
}


def device_name() -> str:
    """The emulated device type, or PrivateUse1's default name before install."""
    return STATE["name"] or "privateuseone"
