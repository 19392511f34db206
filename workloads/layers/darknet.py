"""Darknet-53 (YOLOv3's backbone) in plain PyTorch, with depth and width knobs.

The published network has five stages of (1, 2, 8, 8, 4) residual blocks over widths
(64, 128, 256, 512, 1024) after a 32-channel stem. Small presets keep the same topology and
only scale the widths (`width`) and the blocks per stage (`depths`), so a CPU smoke run
exercises the same code path as the full model.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

DARKNET53_DEPTHS: tuple[int, ...] = (1, 2, 8, 8, 4)
DARKNET53_STEM = 32
DARKNET53_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 1024)


def scaled_channels(channels: int, width: float, minimum: int = 8) -> int:
    """Channels times the width multiplier, rounded to a multiple of 8 (>= minimum)."""
    return max(minimum, int(round(channels * width / 8.0)) * 8)


class ConvBNLeaky(nn.Sequential):
    """Conv (no bias, BN follows) + BatchNorm + LeakyReLU(0.1): mmdet's ConvModule for YOLO."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(0.1, inplace=True),
        )


class ResBlock(nn.Module):
    """1x1 bottleneck to half the channels, 3x3 back up, plus identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = ConvBNLeaky(channels, half, 1)
        self.conv2 = ConvBNLeaky(half, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


def make_stage(in_ch: int, out_ch: int, num_blocks: int) -> nn.Sequential:
    """A stride-2 3x3 downsampling conv followed by `num_blocks` residual blocks."""
    layers: list[nn.Module] = [ConvBNLeaky(in_ch, out_ch, 3, stride=2)]
    layers += [ResBlock(out_ch) for _ in range(num_blocks)]
    return nn.Sequential(*layers)


class Darknet(nn.Module):
    """Darknet backbone returning the features of `out_indices` (stem = 0, stages = 1..5).

    The default (3, 4, 5) returns strides 8, 16, 32, lowest resolution last, as mmdet does.
    """

    def __init__(
        self,
        depths: Sequence[int] = DARKNET53_DEPTHS,
        width: float = 1.0,
        out_indices: Sequence[int] = (3, 4, 5),
        in_channels: int = 3,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        # mmdet's Darknet keeps its BatchNorm statistics frozen in training (norm_eval=True,
        # darknet.py:108) over the ImageNet weights it loads.
        self.norm_eval = norm_eval
        if len(depths) != len(DARKNET53_WIDTHS):
            raise ValueError(f"Darknet needs {len(DARKNET53_WIDTHS)} stage depths, got {depths}")
        self.out_indices = tuple(out_indices)
        stem = scaled_channels(DARKNET53_STEM, width)
        self.stem = ConvBNLeaky(in_channels, stem, 3)
        widths = [scaled_channels(c, width) for c in DARKNET53_WIDTHS]
        self.stages = nn.ModuleList()
        prev = stem
        for out_ch, depth in zip(widths, depths):
            self.stages.append(make_stage(prev, out_ch, depth))
            prev = out_ch
        all_channels = [stem, *widths]
        self.out_channels: tuple[int, ...] = tuple(all_channels[i] for i in self.out_indices)

    def train(self, mode: bool = True) -> Darknet:
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs: list[torch.Tensor] = []
        x = self.stem(x)
        if 0 in self.out_indices:
            outs.append(x)
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
