"""perception-harness: plugin-based, hardware-portable perception training benchmarks.

Public API for plugin authors: the Backend and Workload contracts, the data they
exchange, the error types, and the `hookimpl` marker.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from harness.errors import (
    BackendUnavailable,
    DatasetError,
    HarnessError,
    MissingExtra,
    UsageError,
)

if TYPE_CHECKING:  # type checkers see the real names
    from harness.api import (
        AUTOCAST_DTYPES,
        MODES,
        PRECISIONS,
        Backend,
        Capabilities,
        Datasets,
        MemoryStats,
        Probe,
        Workload,
    )

hookimpl = pluggy.HookimplMarker("harness")

__version__ = "0.1.0"

# The contract classes live in harness.api, which imports torch; resolve them on first use
# (PEP 562) so that `import harness` (the report verbs, --help) stays torch-free.
_API_NAMES = ("AUTOCAST_DTYPES", "MODES", "PRECISIONS", "Backend", "Capabilities", "Datasets",
              "MemoryStats", "Probe", "Workload")


def __getattr__(name: str) -> object:
    if name in _API_NAMES:
        import harness.api

        return getattr(harness.api, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


__all__ = [
    "AUTOCAST_DTYPES", "MODES", "PRECISIONS", "Backend", "BackendUnavailable", "Capabilities",
    "DatasetError", "Datasets", "HarnessError", "MemoryStats", "MissingExtra", "Probe",
    "UsageError", "Workload", "hookimpl", "__version__",
]
