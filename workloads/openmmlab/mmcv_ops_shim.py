"""`import mmcv.ops` without mmcv's compiled extension: the portable ops stand in.

mmcv-lite (mmcv without compiled code) ships mmcv/ops/*.py, but each of those loads
`mmcv._ext` at import, so `import mmdet.models` fails before any model is built. install()
puts an import finder at the front of sys.meta_path that answers for `mmcv.ops` and for
each `mmcv.ops.<submodule>` of ops_catalog.CATALOG with a module built from
workloads.openmmlab.ops. Nothing in site-packages is touched; uninstall() undoes it.

Where the compiled extension imports, install() does nothing unless forced: the real ops
are the reference, and substituting them silently would change what a run measures.
Modules that imported an op before a forced install keep the object they imported.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Sequence

from workloads.openmmlab.ops_catalog import CATALOG, SUBMODULE_ONLY

PACKAGE = "mmcv.ops"
# mmcv registers its deformable convs under these names in mmengine's MODELS (the names
# conv_cfg/dcn dicts of configs use).
REGISTERED = (("DCN", "DeformConv2dPack"), ("DCNv2", "ModulatedDeformConv2dPack"))


class _PortableOpsFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads `mmcv.ops` and its catalogued submodules; declines anything else
    (an unknown `mmcv.ops.x` then fails as a missing module: the package's path is empty)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == PACKAGE:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        parent, _, child = fullname.rpartition(".")
        if parent == PACKAGE and child in CATALOG:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        from workloads.openmmlab import ops

        if module.__name__ == PACKAGE:
            # Load every submodule first, as a real package's __init__ does: loading one
            # binds its name on the package (mmcv.ops.nms = <module>), and the names bound
            # below must win (mmcv.ops.nms is the function), also for later imports.
            for child in CATALOG:
                importlib.import_module(f"{PACKAGE}.{child}")
            names = sorted(n for n in ops.NAMESPACE if n not in SUBMODULE_ONLY)
            _register_with_mmengine(ops)
        else:
            names = list(ops.submodule_names(module.__name__.rpartition(".")[2]))
        for name in names:
            setattr(module, name, ops.NAMESPACE[name])
        module.__all__ = names  # what `from mmcv.ops import *` takes
        module.__doc__ = (f"Portable stand-in for {module.__name__} "
                          "(workloads.openmmlab.mmcv_ops_shim).")


_FINDER = _PortableOpsFinder()


def _register_with_mmengine(ops: types.ModuleType) -> None:
    """Register the deformable convs where the real mmcv.ops registers them."""
    try:
        from mmengine.registry import MODELS
    except ImportError:  # mmengine absent: nothing could look them up by name anyway
        return
    for name, attribute in REGISTERED:
        if name not in MODELS.module_dict:
            MODELS.register_module(name=name, module=ops.NAMESPACE[attribute])


def compiled_ops_available() -> bool:
    """Whether mmcv's compiled extension (mmcv._ext) imports here."""
    if "mmcv._ext" in sys.modules:
        return True
    try:
        importlib.import_module("mmcv._ext")
    except (ImportError, OSError):  # OSError: the library exists but cannot be loaded
        return False
    return True


def installed() -> bool:
    return _FINDER in sys.meta_path


def _ours(module: types.ModuleType | None) -> bool:
    spec = getattr(module, "__spec__", None)
    return spec is not None and spec.loader is _FINDER


def _forget(only_ours: bool) -> None:
    """Drop `mmcv.ops` and its submodules from sys.modules and from the mmcv package."""
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        if not only_ours or _ours(sys.modules[name]):
            del sys.modules[name]
    parent = sys.modules.get("mmcv")
    if parent is not None and "ops" in vars(parent) and (not only_ours or _ours(parent.ops)):
        delattr(parent, "ops")


def install(force: bool = False) -> str:
    """Make `mmcv.ops` resolve to the portable ops; returns what it did, one of
    "installed", "already installed", "compiled" (mmcv._ext imports: left alone)."""
    if installed():
        return "already installed"
    if not force and compiled_ops_available():
        return "compiled"
    _forget(only_ours=False)  # a real mmcv.ops imported before a forced install
    sys.meta_path.insert(0, _FINDER)
    return "installed"


def uninstall() -> None:
    """Remove the finder and the modules it made; a later `import mmcv.ops` is mmcv's own."""
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    _forget(only_ours=True)
