"""mmdetection's YOLOv3 checkpoint layout, key by key (docs/workloads/yolov3.md).

mmdetection v3.3.0 builds `yolov3_d53_8xb8-ms-608-273e_coco.py` from
mmdet/models/backbones/darknet.py (`conv1`, `conv_res_block{1..5}`), mmdet/models/necks/
yolo_neck.py (`detect1`, then per level `conv{i}` and `detect{i+1}`, each DetectionBlock
`conv1..conv5`) and mmdet/models/dense_heads/yolo_head.py (`convs_bridge.{i}`,
`convs_pred.{i}`); every ConvModule holds `conv` and `bn`. Its state dict: 438 tensors,
61,949,149 parameters (FIELD_NOTES). Its head predicts per anchor (x, y, w, h, objectness,
classes), as ours, so the raw outputs are equal on the same weights.
"""
from __future__ import annotations

import re

from harness.start_weights import WeightLayout
from workloads.layers.pretrained import mmdet_darknet_key

_CONV_BN = {"conv": "0", "bn": "1"}


def mmdet_yolov3_key(key: str) -> str | None:
    """An mmdet YOLOV3 detector key -> this project's YOLOv3 key (None: not a model tensor)."""
    if key.startswith("backbone."):
        return "backbone." + mmdet_darknet_key(key[len("backbone."):])
    if m := re.match(r"^neck\.detect(\d+)\.conv(\d+)\.(conv|bn)\.(.+)$", key):
        level, conv, part, rest = int(m[1]) - 1, int(m[2]) - 1, _CONV_BN[m[3]], m[4]
        return f"neck.detects.{level}.convs.{conv}.{part}.{rest}"
    if m := re.match(r"^neck\.conv(\d+)\.(conv|bn)\.(.+)$", key):
        return f"neck.laterals.{int(m[1]) - 1}.{_CONV_BN[m[2]]}.{m[3]}"
    if m := re.match(r"^bbox_head\.convs_bridge\.(\d+)\.(conv|bn)\.(.+)$", key):
        return f"head.bridges.{m[1]}.{_CONV_BN[m[2]]}.{m[3]}"
    if m := re.match(r"^bbox_head\.convs_pred\.(\d+)\.(weight|bias)$", key):
        return f"head.preds.{m[1]}.{m[2]}"
    return key  # not an mmdet name: left as it is, so the fit reports it as unexpected


MMDET_YOLOV3 = WeightLayout(
    "mmdet-yolov3", "open-mmlab/mmdetection v3.3.0 configs/yolo/yolov3_d53_8xb8-ms-608-273e_coco.py "
    "(darknet.py, yolo_neck.py, yolo_head.py)", mmdet_yolov3_key)
