"""SECOND-style FPN: bring every level to one stride, then concatenate the channels.

Like mmdet3d's SECONDFPN: a level with upsample stride s >= 1 goes through a transposed
conv (kernel = stride = s), one with s < 1 through a strided conv (kernel = stride = 1/s);
each is followed by BN (eps 1e-3, momentum 0.01) and ReLU. The output is one map with
sum(out_channels) channels, cropped to the smallest level's size when sizes differ.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SECONDFPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int],
                 upsample_strides: Sequence[float]) -> None:
        super().__init__()
        if not len(in_channels) == len(out_channels) == len(upsample_strides):
            raise ValueError("SECONDFPN: in_channels, out_channels and upsample_strides "
                             "must have the same length")
        self.blocks = nn.ModuleList()
        for cin, cout, stride in zip(in_channels, out_channels, upsample_strides):
            if stride >= 1:
                k = int(stride)
                layer: nn.Module = nn.ConvTranspose2d(cin, cout, k, stride=k, bias=False)
            else:
                k = int(round(1 / stride))
                layer = nn.Conv2d(cin, cout, k, stride=k, bias=False)
            self.blocks.append(nn.Sequential(
                layer, nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)))
        self.out_channels = int(sum(out_channels))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.blocks):
            raise ValueError(f"SECONDFPN expects {len(self.blocks)} levels, got {len(feats)}")
        outs = [block(x) for block, x in zip(self.blocks, feats)]
        # Inputs not divisible by the coarsest stride (e.g. 176 px at stride 32) upsample one
        # cell too far; crop to the common size (a no-op at the published resolutions).
        h = min(o.shape[2] for o in outs)
        w = min(o.shape[3] for o in outs)
        outs = [o[:, :, :h, :w] for o in outs]
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
