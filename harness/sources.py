"""Workload sources: a workload named SOURCE:PATH is built from a user's file instead of
being a plugin's (`mmdet:configs/my_yolov3.py`). What each source needs is known here
without importing it (no torch, no plugin: `harness list` and `--help` stay light); the
builder lives with the workloads (workloads/openmmlab)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

# source prefix -> (modules it needs, the module whose register_all_modules fills the registries)
STACKS: dict[str, tuple[tuple[str, ...], str]] = {
    "mmdet": (("mmengine", "mmcv", "mmdet"), "mmdet.utils"),
    # mmdet3d imports numba, trimesh, lyft_dataset_sdk and nuscenes at `import mmdet3d.models`
    "mmdet3d": (("mmengine", "mmcv", "mmdet", "mmdet3d", "numba", "trimesh", "lyft_dataset_sdk",
                 "nuscenes"), "mmdet3d.utils"),
}
_INSTALL = ('pip install -e ".[mmdet]" "numpy<2" && pip install --no-deps mmengine==0.10.7 '
            'mmcv-lite==2.1.0 mmdet==3.3.0')


def is_config_source(name: str) -> bool:
    """Whether workload `name` is SOURCE:PATH for a known source."""
    return ":" in name and name.partition(":")[0] in STACKS


def file_name(workload: str) -> str:
    """What names a workload in file names (its reference table, its run folders): its name,
    or for SOURCE:PATH the source and the config's stem (`mmdet-yolov3_d53_8xb8-320-273e_coco`),
    no slashes."""
    if not is_config_source(workload):
        return workload
    stack, _, path = workload.partition(":")
    return f"{stack}-{Path(path).stem}"


def missing(stack: str) -> list[str]:
    """The modules of `stack` that are not importable (empty: installed)."""
    return [m for m in STACKS[stack][0] if importlib.util.find_spec(m) is None]


_INSTALL_3D = (" mmdet3d==1.4.0 lyft_dataset_sdk==0.0.8 trimesh && pip install numba "
               "nuscenes-devkit")


def install_line(stack: str) -> str:
    return _INSTALL + (_INSTALL_3D if stack == "mmdet3d" else "")


def inventory() -> list[dict[str, object]]:
    """Each source, whether its stack is installed here, else the line that installs it."""
    out: list[dict[str, object]] = []
    for stack in STACKS:
        absent = missing(stack)
        out.append({"name": f"{stack}:CONFIG.py", "available": not absent,
                    "reason": (f"needs {', '.join(absent)}: {install_line(stack)}"
                               if absent else "")})
    return out
