"""Stand-ins for the mmcv ops that have no portable version yet.

Model code imports many ops at module level that a given config never uses (mmdet's mask
structures import roi_align, its roi extractors RoIAlign...). A placeholder makes such an
import succeed and fails only when the op is used: calling it, instantiating it, or
instantiating a subclass of it raises NotImplementedError naming the op. Every placeholder
is an nn.Module subclass, so model code may also subclass it or register it in a registry
(a plain function could not be a base class).
"""
from __future__ import annotations

from typing import Any, NoReturn

from torch import nn


class PortableOpMissing(nn.Module):
    """Base of every placeholder; `op_name` is the mmcv.ops name it stands for."""

    op_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The nearest placeholder in the MRO names the op, also for a model's subclass.
        raise NotImplementedError(
            f"mmcv.ops.{self.op_name} has no portable implementation in "
            "workloads/openmmlab (only mmcv's compiled extension provides it); the "
            "portable ops are listed in docs/openmmlab.md")

    def forward(self, *args: Any, **kwargs: Any) -> NoReturn:  # never reached: no instance
        raise NotImplementedError(f"mmcv.ops.{self.op_name}")


def placeholder(name: str) -> type[PortableOpMissing]:
    """A placeholder class for the op `name` (module workloads.openmmlab.ops_placeholders)."""
    return type(name, (PortableOpMissing,), {"op_name": name, "__module__": __name__,
                                             "__doc__": f"Placeholder for mmcv.ops.{name}."})


def is_placeholder(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, PortableOpMissing)
