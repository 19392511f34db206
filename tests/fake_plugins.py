"""Test-only plugins: a backend that is never available, a workload with a missing extra."""
from __future__ import annotations

import torch

from harness import Backend, Probe, Workload, hookimpl
from tests.tiny_workload import TinyWorkload


class GhostBackend(Backend):
    name = "ghost"
    device_type = "cpu"

    @classmethod
    def probe(cls) -> Probe:
        return Probe(False, "ghost_runtime is not installed (pip install ghost-runtime)")

    def setup(self, local_rank: int = 0) -> torch.device:
        raise AssertionError("never reached: the probe says unavailable")

    def synchronize(self) -> None:
        pass


class NeedsExtra(TinyWorkload):
    name = "needs_extra"
    requires = ("no_such_module_for_tests",)
    extra = "needs-extra"


@hookimpl
def harness_backends() -> list[type[Backend]]:
    return [GhostBackend]


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [NeedsExtra]
