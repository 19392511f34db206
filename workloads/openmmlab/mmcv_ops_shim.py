"""`import mmcv.ops` without mmcv's compiled extension: the portable ops stand in.

mmcv-lite (mmcv without compiled code) ships mmcv/ops/*.py, but each of those loads
`mmcv._ext` at import, so `import mmdet.models` fails before any model is built. install()
puts an import finder at the front of sys.meta_path that answers for `mmcv.ops` and for
each `mmcv.ops.<submodule>` of ops_catalog.CATALOG with a module built from
workloads.openmmlab.ops. Nothing in site-packages is touched; uninstall() undoes it.

The finder also answers `mmcv._ext` where no compiled extension exists: some model code
loads the extension itself at import (mmdet3d's voxelize.py calls
`mmcv.utils.ext_loader.load_ext('_ext', [...])`, whatever the config). The stand-in's
attributes are functions that raise NotImplementedError naming the kernel when called; its
`PORTABLE_STANDIN` marker tells it from a compiled extension (compiled_ops_available()).
With it findable, mmengine's `mmcv_full_available()` says yes, so its optimizer constructor
applies `dcn_offset_lr_mult` to the portable deformable convs as it would to mmcv's.

Where the compiled extension imports, install() does nothing unless forced: the real ops
are the reference, and substituting them silently would change what a run measures.
Modules that imported an op before a forced install keep the object they imported; a
forced install never shadows a compiled `mmcv._ext`.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any, NoReturn, Sequence

from workloads.openmmlab.ops_catalog import CATALOG, SUBMODULE_ONLY

PACKAGE = "mmcv.ops"
EXT = "mmcv._ext"
MARKER = "PORTABLE_STANDIN"  # set (True) on the stand-in extension only
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
        if fullname == EXT:
            return None if _real_ext_spec(path) is not None else (
                importlib.machinery.ModuleSpec(fullname, self))
        parent, _, child = fullname.rpartition(".")
        if parent == PACKAGE and child in CATALOG:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        from workloads.openmmlab import ops

        if module.__name__ == EXT:
            _make_ext_standin(module)
            return
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


def _real_ext_spec(path: Sequence[str] | None = None) -> importlib.machinery.ModuleSpec | None:
    """The spec of a compiled `mmcv._ext` (in the mmcv package's `path`), asking every
    finder but ours."""
    if path is None:
        try:
            path = importlib.import_module("mmcv").__path__
        except ImportError:
            return None
    return _find_without_us(EXT, path)


def _find_without_us(name: str, path: Sequence[str] | None) -> importlib.machinery.ModuleSpec | None:
    for finder in sys.meta_path:
        if finder is _FINDER or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(name, path)
        if spec is not None:
            return spec
    return None


def _missing_kernel(name: str) -> Any:
    def kernel(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"mmcv._ext.{name}: mmcv's compiled kernel is not installed here (mmcv-lite); "
            "its portable replacements are the mmcv.ops of docs/openmmlab.md")
    kernel.__name__ = kernel.__qualname__ = name
    return kernel


def _make_ext_standin(module: types.ModuleType) -> None:
    """`mmcv._ext` without compiled code: every kernel name resolves (load_ext's hasattr
    checks pass) to a function raising NotImplementedError when called."""
    def __getattr__(name: str) -> Any:  # PEP 562
        if name.startswith("__"):
            raise AttributeError(f"module {EXT!r} has no attribute {name!r}")
        kernel = _missing_kernel(name)
        setattr(module, name, kernel)
        return kernel

    setattr(module, MARKER, True)
    setattr(module, "__getattr__", __getattr__)
    module.__doc__ = ("Stand-in for mmcv's compiled extension (workloads.openmmlab."
                      "mmcv_ops_shim): every kernel raises NotImplementedError when called.")


def is_standin(module: object) -> bool:
    """Whether `module` is the shim's stand-in `mmcv._ext`."""
    return getattr(module, "__dict__", {}).get(MARKER) is True


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
    """Whether mmcv's compiled extension (mmcv._ext) imports here (the shim's stand-in
    does not count)."""
    loaded = sys.modules.get(EXT)
    if loaded is not None:
        return not is_standin(loaded)
    if _real_ext_spec() is None:
        return False  # (with the shim installed, importing would make the stand-in)
    try:
        ext = importlib.import_module(EXT)
    except (ImportError, OSError):  # OSError: the library exists but cannot be loaded
        return False
    return not is_standin(ext)


def installed() -> bool:
    return _FINDER in sys.meta_path


def _ours(module: types.ModuleType | None) -> bool:
    spec = getattr(module, "__spec__", None)
    return spec is not None and spec.loader is _FINDER


def _forget(only_ours: bool) -> None:
    """Drop `mmcv.ops` and its submodules from sys.modules and from the mmcv package, and
    the stand-in `mmcv._ext` (a compiled one stays)."""
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        if not only_ours or _ours(sys.modules[name]):
            del sys.modules[name]
    if is_standin(sys.modules.get(EXT)):
        del sys.modules[EXT]
    parent = sys.modules.get("mmcv")
    if parent is not None and "ops" in vars(parent) and (not only_ours or _ours(parent.ops)):
        delattr(parent, "ops")
    if parent is not None and is_standin(vars(parent).get("_ext")):
        delattr(parent, "_ext")


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
