"""StreamPETR's own checkpoint layout (exiawsh/StreamPETR, mmdet3d 1.0.0rc6 / mmcv 1.6.0 /
mmdet 2.28), key by key: {"meta", "state_dict"} as mmcv's save_checkpoint writes it for
stream_petr_r50_flash_704_bs2_seq_24e (streampetr_r50_manifest.txt lists its 591 tensors,
read from the code at commit 95f64702306ccdb7a78889578b2a55b5deb35b2a).

The names map one to one onto ours, with these exceptions:
- `pts_bbox_head.{code_weights, match_costs, pc_range, position_range, coords_d}` are
  constant nn.Parameters (requires_grad=False) of the original; ours derives them from the
  config (non-persistent buffers): not model tensors here (None).
- `cls_branches.{0..5}` / `reg_branches.{0..5}` list one shared module six times
  (streampetr_head.py:254-257); index 0 is our `cls_branch` / `reg_branch`, 1..5 are the
  same tensors (None).
- The decoder's attentions pack q, k, v into `in_proj_weight` (3C, C) / `in_proj_bias` (3C)
  (nn.MultiheadAttention for the self-attention, FlashMHA for the cross-attention, both
  [q; k; v]); ours holds three Linears `q`, `k`, `v`. A renaming cannot split a tensor: the
  layout's transform (`to_our_tensors`, run by harness/start_weights.py before renaming)
  splits it in the original's namespace (`attn.q_proj_weight`, ... which `streampetr_key`
  maps onto q/k/v).
- FocalHead's `shared_cls.0` / `shared_reg.0` are nn.Conv2d with a bias
  (focal_head.py:123,128), as ours in `full` (`focal_conv_bias`; the smoke preset keeps the
  bias-free convs its rows were measured with).
- Same shapes, other meaning: the original's FocalHead `img_roi_head.cls` rows follow its
  converter's 2D label order (nuscenes_converter.py:17 `nus_categories`: car, truck,
  trailer, bus, construction_vehicle, bicycle, motorcycle, pedestrian, traffic_cone,
  barrier), ours the config's class order; the transform permutes the 10 rows by
  [0, 1, 4, 3, 2, 9, 6, 5, 7, 8] (ours <- original).
- The original's box code orders the sizes (l, w, h) where ours is (w, l, h): the
  transform swaps those two rows of the regression branch's last layer.
"""
from __future__ import annotations

import re

import torch

from harness.start_weights import WeightLayout
from workloads.layers.pretrained import torchvision_resnet_key

COMMIT = "95f64702306ccdb7a78889578b2a55b5deb35b2a"
_CONSTANTS = ("code_weights", "match_costs", "pc_range", "position_range", "coords_d")
_ATTN = {"0": "self_attn", "1": "cross_attn"}  # operation_order: self_attn, norm, cross_attn, ...
_LAYER = r"^transformer\.decoder\.layers\.(\d+)\."


def _head_key(key: str) -> str | None:
    """A StreamPETRHead key (without `pts_bbox_head.`) -> ours (None: not a model tensor)."""
    if key in _CONSTANTS:
        return None
    if m := re.match(r"^(cls|reg)_branches\.(\d+)\.(.+)$", key):
        return f"{m[1]}_branch.{m[3]}" if m[2] == "0" else None  # one module, listed six times
    if m := re.match(r"^featurized_pe\.conv_(reduce|expand)\.(weight|bias)$", key):
        return f"featurized_pe.{m[1]}.{m[2]}"
    if m := re.match(_LAYER + r"attentions\.([01])\.attn\.out_proj\.(weight|bias)$", key):
        return f"decoder.layers.{m[1]}.{_ATTN[m[2]]}.out.{m[3]}"
    if m := re.match(_LAYER + r"attentions\.([01])\.attn\.([qkv])_proj_(weight|bias)$", key):
        return f"decoder.layers.{m[1]}.{_ATTN[m[2]]}.{m[3]}.{m[4]}"  # after split_in_proj
    if m := re.match(_LAYER + r"attentions\.([01])\.attn\.(in_proj_weight|in_proj_bias)$", key):
        return f"decoder.layers.{m[1]}.{_ATTN[m[2]]}.{m[3]}"  # packed: no such tensor of ours
    if m := re.match(_LAYER + r"ffns\.0\.layers\.(0\.0|1)\.(weight|bias)$", key):
        return f"decoder.layers.{m[1]}.ffn.{'0' if m[2] == '0.0' else '3'}.{m[3]}"
    if m := re.match(_LAYER + r"norms\.([012])\.(weight|bias)$", key):
        return f"decoder.layers.{m[1]}.norms.{m[2]}.{m[3]}"
    if m := re.match(r"^transformer\.decoder\.post_norm\.(weight|bias)$", key):
        return f"decoder.post_norm.{m[1]}"
    # position_encoder, memory_embed, reference_points, pseudo_reference_points,
    # query_embedding, spatial_alignment, time_embedding, ego_pose_pe, ego_pose_memory
    return key


def streampetr_key(key: str) -> str | None:
    """An original StreamPETR (Petr3D) key -> this project's StreamPETR key."""
    if key.startswith("img_backbone."):  # mmdet ResNet: torchvision's names
        name = torchvision_resnet_key(key[len("img_backbone."):])
        return None if name is None else "backbone." + name
    if m := re.match(r"^img_neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)$", key):
        return f"neck.laterals.{m[1]}.{m[2]}"
    if m := re.match(r"^img_neck\.fpn_convs\.0\.conv\.(weight|bias)$", key):
        return f"neck.out_conv.{m[1]}"
    if key.startswith("pts_bbox_head."):
        name = _head_key(key[len("pts_bbox_head."):])
        return None if name is None else "pts_bbox_head." + name
    # img_roi_head (FocalHead): cls, shared_cls.{0,1}, shared_reg.{0,1}, centerness, ltrb,
    # center2d, as ours; anything else is left as it is, so the fit reports it as unexpected.
    return key


def split_in_proj(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original's packed attention projections split into q, k, v thirds, named
    `...attn.{q,k,v}_proj_{weight,bias}` in the original's namespace (the other tensors as
    they are): what a loader able to transform tensors would apply before `streampetr_key`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.match(r"^(.*\.attn\.)in_proj_(weight|bias)$", key):
            for part, chunk in zip("qkv", value.chunk(3)):
                out[f"{m[1]}{part}_proj_{m[2]}"] = chunk
        else:
            out[key] = value
    return out


# Ours <- original rows of the FocalHead's class outputs: the original's 2D labels follow its
# converter's nus_categories order (nuscenes_converter.py:17), ours the config's classes.
FOCAL_CLASS_ROWS = (0, 1, 4, 3, 2, 9, 6, 5, 7, 8)


# Ours <- original rows of the box code: the original's sizes are mmdet3d's (l, w, h)
# (normalize_bbox logs bboxes[..., 3:6] as they come; nuscenes_converter.py:267), ours
# nuScenes's (w, l, h): the two size rows swap.
BOX_CODE_ROWS = (0, 1, 2, 4, 3, 5, 6, 7, 8, 9)


def to_our_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What renaming cannot do: split the packed projections, reorder the 2D class rows and
    the box code's size rows."""
    out = split_in_proj(state)
    for key in ("img_roi_head.cls.weight", "img_roi_head.cls.bias"):
        if key in out and out[key].shape[0] == len(FOCAL_CLASS_ROWS):
            out[key] = out[key][list(FOCAL_CLASS_ROWS)]
    for key, value in out.items():
        if re.match(r"^pts_bbox_head\.reg_branches\.\d+\.4\.(weight|bias)$", key) \
                and value.shape[0] == len(BOX_CODE_ROWS):
            out[key] = value[list(BOX_CODE_ROWS)]
    return out


STREAMPETR_MMDET3D = WeightLayout(
    "streampetr-mmdet3d",
    f"exiawsh/StreamPETR {COMMIT[:7]} projects/configs/StreamPETR/"
    "stream_petr_r50_flash_704_bs2_seq_24e.py (petr3d.py, streampetr_head.py, focal_head.py, "
    "cp_fpn.py, petr_transformer.py; mmdet ResNet, mmcv MultiheadAttention/FFN)",
    streampetr_key, to_our_tensors)
