"""Megvii's BEVDepth / MatrixVT checkpoint layout, key by key (bevdepth_lss_r50_2key_manifest.txt).

The original (Megvii-BaseDetection/BEVDepth d78c7b58) trains `BEVDepthLightningModel`, whose
`self.model` is `BaseBEVDepth` (bevdepth/models/base_bev_depth.py) or `MatrixVT_Det`; its
Lightning checkpoints (and the EMA callback's) hold {"state_dict": {"model.<name>": tensor}}.
Module for module it is this project's BEVDepth:

  backbone.img_backbone (mmdet ResNet-50)        -> encoder.backbone (layerN -> stages.N-1)
  backbone.img_neck.deblocks (mmdet3d SECONDFPN) -> encoder.neck.blocks
  backbone.depth_net (DepthNet)                  -> depth_net (Mlp fc1/fc2 -> 0/2, SELayer
      conv_reduce/conv_expand -> reduce/expand, ASPP aspp1..4 / global_avg_pool / conv1+bn1
      -> branches.0..3 / image_pool.1 / project; BasicBlocks, DCN and the last conv as they are)
  backbone.horiconv, backbone.depth_reducer      -> view_transform.* (MatrixVT; HoriConv's flat
      conv1/conv2 Sequentials of 6 -> two conv-BN-ReLU Sequentials each)
  head.trunk (mmdet ResNet-18, no maxpool)       -> head.trunk
  head.neck.deblocks                             -> head.neck.blocks
  head.shared_conv / head.task_heads.T.<name>    -> head.shared_conv / head.task_heads.T.heads.<name>
      (mmcv ConvModule conv/bn -> Sequential 0/1)

The original's BaseLSSFPN registers its grid and frustum as persistent buffers (voxel_size,
voxel_coord, voxel_num, frustum; MatrixVT adds bev_anchors). They are not weights: constants
computed from x/y/z/d_bound, final_dim and downsample_factor, which this model computes from its
config (non-persistent buffers of the view transform); they are left out (None). A checkpoint of
another depth range still fails on depth_conv.5's shape; one of another BEV grid size alone
does not (no weight's shape depends on it).
"""
from __future__ import annotations

import re

import torch

from harness.start_weights import WeightLayout
from workloads.layers.pretrained import torchvision_resnet_key

_GEOMETRY = frozenset(f"backbone.{name}" for name in
                      ("voxel_size", "voxel_coord", "voxel_num", "frustum", "bev_anchors"))
_CONV_BN = {"conv": "0", "bn": "1"}


def _resnet(key: str) -> str:
    return torchvision_resnet_key(key) or key  # mmdet's ResNet names are torchvision's


def _depth_net(key: str) -> str:
    if m := re.match(r"^(depth|context)_mlp\.fc([12])\.(.+)$", key):
        return f"{m[1]}_mlp.{0 if m[2] == '1' else 2}.{m[3]}"
    if m := re.match(r"^(depth|context)_se\.conv_(reduce|expand)\.(.+)$", key):
        return f"{m[1]}_se.{m[2]}.{m[3]}"
    if m := re.match(r"^depth_conv\.3\.aspp([1-4])\.(atrous_conv|bn)\.(.+)$", key):
        return f"depth_conv.3.branches.{int(m[1]) - 1}.{0 if m[2] == 'atrous_conv' else 1}.{m[3]}"
    if m := re.match(r"^depth_conv\.3\.global_avg_pool\.([12])\.(.+)$", key):
        return f"depth_conv.3.image_pool.1.{int(m[1]) - 1}.{m[2]}"
    if m := re.match(r"^depth_conv\.3\.(conv1|bn1)\.(.+)$", key):
        return f"depth_conv.3.project.{0 if m[1] == 'conv1' else 1}.{m[2]}"
    return key  # reduce_conv, context_conv, bn, depth_conv.0-2 (BasicBlock), .4 (DCN), .5


def _horiconv(key: str) -> str:
    # conv1/conv2: Sequential(Conv1d, BN1d, ReLU, Conv1d, BN1d, ReLU) -> ours two _conv1d_bn
    if m := re.match(r"^(conv[12])\.([0-5])\.(.+)$", key):
        i = int(m[2])
        return f"{m[1]}.{i // 3}.{i % 3}.{m[3]}"
    return key  # merger, reduce_conv, out_conv


def bevdepth_lightning_key(key: str) -> str | None:
    """An original BEVDepth/MatrixVT key (with or without Lightning's `model.`) -> this
    project's BEVDepth key; None: a geometry constant, not a weight."""
    key = key[len("model."):] if key.startswith("model.") else key
    if key in _GEOMETRY:
        return None
    if key.startswith("backbone.img_backbone."):
        return "encoder.backbone." + _resnet(key[len("backbone.img_backbone."):])
    if key.startswith("backbone.img_neck.deblocks."):
        return "encoder.neck.blocks." + key[len("backbone.img_neck.deblocks."):]
    if key.startswith("backbone.depth_net."):
        return "depth_net." + _depth_net(key[len("backbone.depth_net."):])
    if key.startswith("backbone.horiconv."):
        return "view_transform.horiconv." + _horiconv(key[len("backbone.horiconv."):])
    if key.startswith("backbone.depth_reducer."):
        return "view_transform." + key[len("backbone."):]
    if key.startswith("head.trunk."):
        return "head.trunk." + _resnet(key[len("head.trunk."):])
    if key.startswith("head.neck.deblocks."):
        return "head.neck.blocks." + key[len("head.neck.deblocks."):]
    if m := re.match(r"^head\.shared_conv\.(conv|bn)\.(.+)$", key):
        return f"head.shared_conv.{_CONV_BN[m[1]]}.{m[2]}"
    if m := re.match(r"^head\.task_heads\.(\d+)\.(\w+)\.0\.(conv|bn)\.(.+)$", key):
        return f"head.task_heads.{m[1]}.heads.{m[2]}.0.{_CONV_BN[m[3]]}.{m[4]}"
    if m := re.match(r"^head\.task_heads\.(\d+)\.(\w+)\.1\.(weight|bias)$", key):
        return f"head.task_heads.{m[1]}.heads.{m[2]}.1.{m[3]}"
    return key  # not an original name: left as it is, so the fit reports it as unexpected


def to_our_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What renaming cannot do: the original's box sizes are (l, w, h) (nusc_det_dataset.py
    get_gt: wlh[[1, 0, 2]]), ours nuScenes's (w, l, h): the `dim` heads' first two output
    rows are swapped."""
    out = dict(state)
    for key, value in state.items():
        if re.search(r"head\.task_heads\.\d+\.dim\.1\.(weight|bias)$", key) and value.shape[0] == 3:
            out[key] = value[[1, 0, 2]]
    return out


BEVDEPTH_LIGHTNING = WeightLayout(
    "bevdepth-lightning",
    "Megvii-BaseDetection/BEVDepth d78c7b58 BEVDepthLightningModel.model (base_bev_depth.py, "
    "base_lss_fpn.py, matrixvt.py, bev_depth_head.py; mmdet ResNet, mmdet3d v1.0.0rc4 "
    "SECONDFPN/CenterHead)", bevdepth_lightning_key, to_our_tensors)
