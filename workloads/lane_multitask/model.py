"""Shared ResNet encoder, FPN to stride 8, GANet's four keypoint heads and a drivable head.

Keypoint branch as GANetHeadFast (mmdet/models/dense_heads/ganet_head.py) with
joint_nums=1: four CtnetHeads (3x3 conv + ReLU + 1x1 conv, heatmap biases at -2.19) on the
stride-8 FPN map give `cpts_hm` (start points), `kpts_hm` (keypoints), `pts_offset` (to
the lane's start point) and `int_offset` (sub-cell remainder).

GANet's neck (DeformFPN, mmdet/models/necks/dcn_fpn.py:216-378) where the config asks
(`full`; ganet_neck.py): `c5_attention` replaces C5 by GANet's attention encoder before its
lateral conv; `lfa` runs GANet's LanePointsConv on the stride-8 sum of the top-down path, whose
output feeds the 3x3 output conv and from it the two heatmap heads, while the two offset heads
read the pre-LFA sum itself (`aux_feat`, dcn_only_cls=True; dcn_fpn.py:348-355, ganet_head.py
:240-263); the LFA's points (`lfa_points`) go to the auxiliary loss in training.
`fpn_out_bn_relu=False` makes the output conv GANet's plain 3x3 conv (no BN, no ReLU). Without
these (`smoke`) all four heads read the output map. GANet also builds the FPN's stride-16/32
output convs and LFAs, which nothing after the neck reads; they are not built here.
The drivable head (two 3x3 conv-BN-ReLU + 1x1) predicts one logit per stride-8 cell,
bilinearly upsampled to the full crop resolution.

`forward` takes float RGB images in [0, 255] and normalises them as GANet does (BGR order,
its mean/std), so an exported graph carries the same pre-processing. It returns a dict of
raw maps (logits for the heatmaps and the mask), plus `lfa_points` in training mode when the LFA
is built. With loss_weighting=uncertainty the model
also holds one fp32 log-variance per task (`log_vars`), trained with the rest.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workloads.lane_multitask.config import LanesConfig
from workloads.lane_multitask.ganet_neck import C5Encoder, LanePointsConv, xavier_init_convs
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
    """Top-down FPN over C3..C5 (strides 8, 16, 32) returning the stride-8 map, the map the
    offset heads read, and the LFA's points (None without the LFA)."""

    def __init__(self, in_channels: list[int], channels: int, c5_encoder: C5Encoder | None = None,
                 lfa: LanePointsConv | None = None, out_bn_relu: bool = True) -> None:
        super().__init__()
        in_channels = list(in_channels)
        self.c5_encoder = c5_encoder
        if c5_encoder is not None:  # GANet's trans_mode "replace": C5 -> its encoded map
            in_channels[-1] = c5_encoder.out_channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.lfa = lfa
        self.out = (conv_bn_relu(channels, channels) if out_bn_relu
                    else nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, feats: list[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        feats = list(feats)
        if self.c5_encoder is not None:
            feats[-1] = self.c5_encoder(feats[-1])
        x = self.lateral[-1](feats[-1])
        for lateral, feat in zip(self.lateral[-2::-1], feats[-2::-1]):
            # size=, not scale_factor: a width like 400 is not a multiple of 32
            x = lateral(feat) + F.interpolate(x, size=feat.shape[-2:], mode="nearest")
        if self.lfa is None:
            out = self.out(x)
            return out, out, None
        feat, points = self.lfa(x)
        return self.out(feat), x, points


class LaneMultitaskNet(nn.Module):
    def __init__(self, cfg: LanesConfig) -> None:
        super().__init__()
        self.backbone = ResNet(depth=cfg.depth, base_channels=cfg.base_channels,
                               stage_blocks=cfg.stage_blocks or None, out_indices=(1, 2, 3),
                               frozen_stages=cfg.frozen_stages)
        c5 = self.backbone.out_channels[-1]
        c5_encoder = (C5Encoder(c5, tuple(cfg.c5_attn_channels), cfg.c5_attn_reduction)
                      if cfg.c5_attention else None)
        lfa = (LanePointsConv(cfg.fpn_channels, cfg.lfa_channels, cfg.lfa_points,
                              cfg.lfa_stacked_convs, cfg.lfa_gradient_mul) if cfg.lfa else None)
        self.neck = StrideEightFPN(self.backbone.out_channels[1:], cfg.fpn_channels, c5_encoder,
                                   lfa, cfg.fpn_out_bn_relu)
        if cfg.c5_attention or cfg.lfa:  # GANet's DeformFPN.init_weights (dcn_fpn.py:308-311)
            xavier_init_convs(self.neck)
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
        feat, aux_feat, points = self.neck(self.backbone(x))
        seg = self.drivable_head(feat)
        out = {
            "cpts_hm": self.centerpts_head(feat),
            "kpts_hm": self.keypts_head(feat),
            "pts_offset": self.offset_head(aux_feat),
            "int_offset": self.reg_head(aux_feat),
            "drivable": F.interpolate(seg, size=images.shape[-2:], mode="bilinear",
                                      align_corners=False),
        }
        if points is not None and self.training:
            out["lfa_points"] = points
        return out
