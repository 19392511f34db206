"""The StreamPETR detector (its Petr3D in streaming mode): GridMask (training), ResNet
C4+C5, CPFPN to one stride-16 level, FocalHead (training only), StreamPETRHead.
`with_cp` checkpoints the backbone stages and the decoder layers."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from workloads.layers.resnet import ResNet
from workloads.streampetr.config import StreamPETRConfig
from workloads.streampetr.focal_head import FocalHead
from workloads.streampetr.head import StreamPETRHead
from workloads.streampetr.layers import CPFPN, grid_mask


class StreamPETR(nn.Module):
    def __init__(self, cfg: StreamPETRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(depth=cfg.backbone_depth, base_channels=cfg.backbone_base_channels,
                               stage_blocks=cfg.backbone_stage_blocks, out_indices=(2, 3),
                               norm_eval=cfg.backbone_norm_eval and bool(cfg.backbone_weights))
        self.neck = CPFPN(self.backbone.out_channels[2:], cfg.embed_dims)
        self.img_roi_head = (FocalHead(cfg.embed_dims, len(cfg.class_names), cfg.focal_conv_bias)
                             if cfg.aux_2d else None)
        self.pts_bbox_head = StreamPETRHead(cfg)

    def _backbone(self, x: torch.Tensor) -> list[torch.Tensor]:
        bb = self.backbone
        cp = self.cfg.with_cp and self.training
        x = checkpoint(bb.forward_stem, x, use_reentrant=False) if cp else bb.forward_stem(x)
        outs = []
        for i, stage in enumerate(bb.stages):
            x = checkpoint(stage, x, use_reentrant=False) if cp else stage(x)
            if i in bb.out_indices:
                outs.append(x)
        return outs

    def forward(self, data: dict[str, Any], gt: dict[str, Any] | None = None) -> tuple[dict, dict | None]:
        """data: imgs (B, N, 3, H, W) and the head's inputs; gt (training): gt_boxes,
        gt_labels (per sample). Returns (3D head outputs, FocalHead outputs or None)."""
        imgs = data["imgs"]
        b, n, _, h, w = imgs.shape
        x = imgs.flatten(0, 1)
        if self.training and self.cfg.grid_mask:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            x = grid_mask(x, rng)
        feats = self.neck(self._backbone(x))  # (BN, C, h/16, w/16)
        aux = self.img_roi_head(feats, (h, w)) if self.training and self.img_roi_head is not None else None
        feats = feats.view(b, n, *feats.shape[1:])
        out = self.pts_bbox_head(feats, (h, w), data, gt and gt["gt_boxes"], gt and gt["gt_labels"])
        return out, aux
