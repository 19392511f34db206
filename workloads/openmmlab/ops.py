"""The portable `mmcv.ops` namespace: every name of ops_catalog.CATALOG, bound to a
pure-PyTorch op (ops_nms, ops_rotated, ops_dcn, ops_misc) or to a placeholder that raises
NotImplementedError naming the op when used (ops_placeholders).

Importing this module imports no mmcv; the shim (mmcv_ops_shim.py) exposes it as
`mmcv.ops`. `PORTABLE` lists the names with a real implementation (docs/openmmlab.md).
"""
from __future__ import annotations

from typing import Any

from workloads.openmmlab.ops_catalog import CATALOG, all_names
from workloads.openmmlab.ops_dcn import (
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2d,
    ModulatedDeformConv2dPack,
    deform_conv2d,
    modulated_deform_conv2d,
)
from workloads.openmmlab.ops_misc import (
    get_compiler_version,
    get_compiling_cuda_version,
    point_sample,
    sigmoid_focal_loss,
)
from workloads.openmmlab.ops_nms import batched_nms, nms, nms_match, nms_quadri, soft_nms
from workloads.openmmlab.ops_placeholders import is_placeholder, placeholder
from workloads.openmmlab.ops_rotated import box_iou_rotated, nms_rotated

_IMPLEMENTED: dict[str, Any] = {
    "nms": nms, "batched_nms": batched_nms, "nms_rotated": nms_rotated,
    "box_iou_rotated": box_iou_rotated,
    "deform_conv2d": deform_conv2d, "DeformConv2d": DeformConv2d,
    "DeformConv2dPack": DeformConv2dPack,
    "modulated_deform_conv2d": modulated_deform_conv2d,
    "ModulatedDeformConv2d": ModulatedDeformConv2d,
    "ModulatedDeformConv2dPack": ModulatedDeformConv2dPack,
    "sigmoid_focal_loss": sigmoid_focal_loss, "point_sample": point_sample,
    "get_compiler_version": get_compiler_version,
    "get_compiling_cuda_version": get_compiling_cuda_version,
    # placeholders made in ops_nms (batched_nms names them as nms types)
    "soft_nms": soft_nms, "nms_match": nms_match, "nms_quadri": nms_quadri,
}

# name -> the object `mmcv.ops.<name>` resolves to.
NAMESPACE: dict[str, Any] = {name: _IMPLEMENTED.get(name) or placeholder(name)
                             for name in all_names()}
PORTABLE: tuple[str, ...] = tuple(sorted(n for n, obj in NAMESPACE.items()
                                         if not is_placeholder(obj)))
__all__ = sorted(NAMESPACE)


def __getattr__(name: str) -> Any:
    """The placeholders by name (ops.RoIAlign), like the ops imported above (PEP 562)."""
    try:
        return NAMESPACE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def submodule_names(submodule: str) -> tuple[str, ...]:
    """The names `mmcv.ops.<submodule>` defines (KeyError for a submodule mmcv lacks)."""
    return CATALOG[submodule]
