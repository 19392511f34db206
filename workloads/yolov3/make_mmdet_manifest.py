"""Regenerate mmdet_yolov3_d53_manifest.txt: the names and shapes of mmdetection's own YOLOv3
state dict, built by mmdet 3.3.0's registry from configs/yolo/yolov3_d53_8xb8-ms-608-273e_coco.py.

Runs where mmdet is importable (the README's install brings it, on mmcv-lite), e.g.

    python -m workloads.yolov3.make_mmdet_manifest

`build_mmdet_yolov3()` is also what test_mmdet_layout.py's `original` test uses.
"""
from __future__ import annotations

from pathlib import Path

CONFIG = "yolo/yolov3_d53_8xb8-ms-608-273e_coco.py"
MANIFEST = Path(__file__).with_name("mmdet_yolov3_d53_manifest.txt")


def install_op_placeholders() -> None:
    """mmcv-lite ships no compiled `mmcv._ext`, so `mmcv.ops` fails to import and mmdet
    imports names from it all over its package: the portable ops take its place
    (workloads/openmmlab/mmcv_ops_shim.py; the YOLOv3 network itself calls none of them)."""
    from workloads.openmmlab.mmcv_ops_shim import install

    install()


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
