"""perception-harness: plugin-based, hardware-portable perception training benchmarks.

Public API for plugin authors: the Backend and Workload contracts, the data they
exchange, the error types, and the `hookimpl` marker.
"""
from __future__ import annotations

import pluggy

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
from harness.errors import (
    BackendUnavailable,
    DatasetError,
    HarnessError,
    MissingExtra,
    UsageError,
)

hookimpl = pluggy.HookimplMarker("harness")

__version__ = "0.1.0"

__all__ = [
    "AUTOCAST_DTYPES", "MODES", "PRECISIONS", "Backend", "BackendUnavailable", "Capabilities",
    "DatasetError", "Datasets", "HarnessError", "MemoryStats", "MissingExtra", "Probe",
    "UsageError", "Workload", "hookimpl", "__version__",
]
