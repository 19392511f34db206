"""The layouts in which pretrained backbones come (`--set backbone_weights=PATH`); nothing is
downloaded. The host (harness/start_weights.py) detects the layout and loads strictly.

- ResNet: torchvision's names (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`,
  `fc` dropped). mmcv/mmdet's ResNet (pytorch and caffe style, e.g. open-mmlab's
  `resnet50_caffe` and the msra files) and timm's resnet use the same names; inside a whole
  mmdet/mmdet3d/BEVDepth checkpoint the backbone's prefix is taken off by the host.
- Darknet-53: mmdet's (`conv1.conv`, `conv_res_block1.conv.conv`,
  `conv_res_block1.res0.conv1.conv`, ...), as open-mmlab's darknet53 checkpoint.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from harness.start_weights import WeightLayout, load_part


def torchvision_resnet_key(key: str) -> str | None:
    """torchvision ResNet name -> workloads.layers.resnet.ResNet name; the classifier is dropped."""
    if re.match(r"^fc\.", key):
        return None
    return re.sub(r"^layer(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.", key)


def mmdet_darknet_key(key: str) -> str:
    """mmdet Darknet name -> workloads.layers.darknet.Darknet name (ConvModule conv/bn =
    our Sequential's 0/1)."""
    key = re.sub(r"^conv1\.(conv|bn)\.", lambda m: f"stem.{'01'[m.group(1) == 'bn']}.", key)
    key = re.sub(r"^conv_res_block(\d+)\.conv\.(conv|bn)\.",
                 lambda m: f"stages.{int(m.group(1)) - 1}.0.{'01'[m.group(2) == 'bn']}.", key)
    return re.sub(r"^conv_res_block(\d+)\.res(\d+)\.(conv[12])\.(conv|bn)\.",
                  lambda m: (f"stages.{int(m.group(1)) - 1}.{int(m.group(2)) + 1}.{m.group(3)}."
                             f"{'01'[m.group(4) == 'bn']}."), key)


TORCHVISION_RESNET = WeightLayout(
    "torchvision-resnet", "pytorch/vision torchvision/models/resnet.py (the names mmcv/mmdet "
    "ResNet and timm resnet share)", torchvision_resnet_key)
MMDET_DARKNET = WeightLayout(
    "mmdet-darknet53", "open-mmlab/mmdetection mmdet/models/backbones/darknet.py (v3.3.0)",
    mmdet_darknet_key)
RESNET_LAYOUTS: tuple[WeightLayout, ...] = (TORCHVISION_RESNET,)
DARKNET_LAYOUTS: tuple[WeightLayout, ...] = (MMDET_DARKNET,)


def load_backbone_weights(module: nn.Module, path: str | Path,
                          layouts: Sequence[WeightLayout] = RESNET_LAYOUTS + DARKNET_LAYOUTS
                          ) -> dict[str, Any]:
    """A backbone file into `module` directly (what the host does for a run); the record's
    entry for it."""
    return load_part(module, path, layouts, part="backbone", option="backbone_weights")
