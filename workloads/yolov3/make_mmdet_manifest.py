"""Regenerate mmdet_yolov3_d53_manifest.txt: the names and shapes of mmdetection's own YOLOv3
state dict, built by mmdet 3.3.0's registry from configs/yolo/yolov3_d53_8xb8-ms-608-273e_coco.py.

Runs only where mmdet is importable (it is not a dependency of this project), e.g.

    pip install --target /work/mmdet_pkgs --no-deps mmcv-lite==2.1.0 mmengine==0.10.7 \
        mmdet==3.3.0 addict yapf rich terminaltables six pyyaml platformdirs markdown-it-py \
        mdurl pygments
    PYTHONPATH=/work/mmdet_pkgs python -m workloads.yolov3.make_mmdet_manifest

`build_mmdet_yolov3()` is also what test_mmdet_layout.py's `original` test uses.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from pathlib import Path

CONFIG = "yolo/yolov3_d53_8xb8-ms-608-273e_coco.py"
MANIFEST = Path(__file__).with_name("mmdet_yolov3_d53_manifest.txt")


class _OpPlaceholderModule(types.ModuleType):
    """An `mmcv.ops.*` module: every public name is a placeholder class.

    mmcv-lite ships no compiled `mmcv._ext`, so `mmcv.ops` fails to import, and mmdet imports
    names from it at module level (RoIAlign, nms, DeformConv2d, ...) all over its package,
    although the YOLOv3 network calls none of them. A class (not a function) because mmdet
    subclasses some of them and registers others in its registries (which want a class);
    instantiating or calling one raises, so a real use of an op cannot go unnoticed."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):  # __path__, __all__, __file__ ...: module machinery
            raise AttributeError(name)
        qualname = f"{self.__name__}.{name}"

        def unavailable(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"{qualname} is a placeholder: mmcv-lite has no compiled ops")

        placeholder = type(name, (), {"__init__": unavailable, "__module__": self.__name__})
        setattr(self, name, placeholder)  # the same object on every access
        return placeholder


class _OpPlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers `mmcv.ops` and every `mmcv.ops.*` import with an _OpPlaceholderModule, ahead of
    the real files (which would import mmcv._ext)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
            # A package (empty search path), so `import mmcv.ops.nms` also comes here.
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _OpPlaceholderModule(spec.name)

    def exec_module(self, module):
        pass


def install_op_placeholders() -> None:
    if not any(isinstance(f, _OpPlaceholderFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _OpPlaceholderFinder())


def build_mmdet_yolov3(num_classes: int = 80):
    """mmdet's YOLOV3 detector as its registry builds it from the config (random weights)."""
    install_op_placeholders()
    import mmdet
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()  # fills the registries and sets mmdet as the default scope
    cfg = Config.fromfile(str(Path(mmdet.__file__).parent / ".mim" / "configs" / CONFIG))
    cfg.model.bbox_head.num_classes = num_classes
    return MODELS.build(cfg.model)


def main() -> None:
    import mmcv
    import mmdet
    import mmengine

    model = build_mmdet_yolov3(80)
    sd = model.state_dict()
    params = sum(p.numel() for p in model.parameters())
    lines = [
        f"# built by mmdet {mmdet.__version__}'s registry from configs/{CONFIG} "
        f"(mmcv-lite {mmcv.__version__}, mmengine {mmengine.__version__}), 80 classes",
        f"# {len(sd)} tensors, {params:,} parameters (BN running stats and num_batches_tracked "
        f"not counted); name<TAB>shape (empty: 0-d), state_dict order",
        "# regenerate: PYTHONPATH=<dir with mmdet> python -m workloads.yolov3.make_mmdet_manifest",
    ]
    lines += [f"{k}\t{','.join(map(str, v.shape))}" for k, v in sd.items()]
    MANIFEST.write_text("\n".join(lines) + "\n")
    print(f"{MANIFEST}: {len(sd)} tensors, {params:,} parameters")


if __name__ == "__main__":
    main()
