"""Shared ResNet encoder, FPN to stride 8, GANet's four keypoint heads and a drivable head.

Keypoint branch as GANetHeadFast (mmdet/models/dense_heads/ganet_head.py) with
joint_nums=1: four CtnetHeads (3x3 conv + ReLU + 1x1 conv, heatmap biases at -2.19) on the
stride-8 FPN map give `cpts_hm` (start points), `kpts_hm` (keypoints), `pts_offset` (to
the lane's start point) and `int_offset` (sub-cell remainder). GANet's LFA (its 1-D
deformable conv) and the transformer on C5 are left out: both heads read the plain FPN map.
The drivable head (two 3x3 conv-BN-ReLU + 1x1) predicts one logit per stride-8 cell,
bilinearly upsampled to the full crop resolution.

`forward` takes float RGB images in [0, 255] and normalises them as GANet does (BGR order,
its mean/std), so an exported graph carries the same pre-processing. It returns a dict of
raw maps (logits for the heatmaps and the mask). With loss_weighting=uncertainty the model
also holds one fp32 log-variance per task (`log_vars`), trained with the rest.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workloads.lane_multitask.config import LanesConfig
from workloads.layers.resnet import ResNet

HEAD_OUTPUTS = ("cpts_hm", "kpts_hm", "pts_offset", "int_offset", "drivable")
TASKS = ("lanes", "drivable")


def ctnet_head(cin: int, mid: int, cout: int, heatmap: bool) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, cout, 1))
    last = head[-1]
    assert isinstance(last, nn.Conv2d) and last.bias is not None
    if heatmap:
        nn.init.constant_(last.bias, -2.19)  # CenterNet prior: sigmoid(-2.19) = 0.1
    else:
        nn.init.zeros_(last.bias)
    return head


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class StrideEightFPN(nn.Module):
    """Top-down FPN over C3..C5 (strides 8, 16, 32) returning only the stride-8 map."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.out = conv_bn_relu(channels, channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](feats[-1])
        for lateral, feat in zip(self.lateral[-2::-1], feats[-2::-1]):
            # size=, not scale_factor: a width like 400 is not a multiple of 32
            x = lateral(feat) + F.interpolate(x, size=feat.shape[-2:], mode="nearest")
        return self.out(x)


class LaneMultitaskNet(nn.Module):
    def __init__(self, cfg: LanesConfig) -> None:
        super().__init__()
        self.backbone = ResNet(depth=cfg.depth, base_channels=cfg.base_channels,
                               stage_blocks=cfg.stage_blocks or None, out_indices=(1, 2, 3),
                               frozen_stages=cfg.frozen_stages)
        self.neck = StrideEightFPN(self.backbone.out_channels[1:], cfg.fpn_channels)
        c, m = cfg.fpn_channels, cfg.head_channels
        self.centerpts_head = ctnet_head(c, m, 1, heatmap=True)
        self.keypts_head = ctnet_head(c, m, 1, heatmap=True)
        self.offset_head = ctnet_head(c, m, 2, heatmap=False)
        self.reg_head = ctnet_head(c, m, 2, heatmap=False)
        self.drivable_head = nn.Sequential(conv_bn_relu(c, cfg.seg_channels),
                                           conv_bn_relu(cfg.seg_channels, cfg.seg_channels),
                                           nn.Conv2d(cfg.seg_channels, 1, 1))
        self.register_buffer("mean", torch.tensor(cfg.mean_bgr).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std_bgr).view(1, 3, 1, 1), persistent=False)
        self.log_vars = (nn.Parameter(torch.zeros(len(TASKS), dtype=torch.float32))
                         if cfg.loss_weighting == "uncertainty" else None)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images.flip(1) - self.mean) / self.std  # RGB -> BGR, GANet's normalisation
        feat = self.neck(self.backbone(x))
        seg = self.drivable_head(feat)
        return {
            "cpts_hm": self.centerpts_head(feat),
            "kpts_hm": self.keypts_head(feat),
            "pts_offset": self.offset_head(feat),
            "int_offset": self.reg_head(feat),
            "drivable": F.interpolate(seg, size=images.shape[-2:], mode="bilinear",
                                      align_corners=False),
        }
