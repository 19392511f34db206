"""Plain-PyTorch ResNet (18/34/50/101) returning multi-level features.

Mirrors the knobs mmdet's ResNet exposes to the BEV detectors: input and base width,
number of stages and their strides, which stages are returned, a frozen stem/stages
(`frozen_stages`, mmdet semantics: 0 freezes the stem only) and `norm_eval` (BN layers
kept in eval mode, i.e. frozen statistics). `stage_blocks` overrides the depth table so
small presets can use one block per stage. No torchvision, no pretrained download.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# depth -> (block kind, blocks per stage)
ARCH: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 ("pytorch" style): the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk; `forward` returns the outputs of the stages in `out_indices`."""

    def __init__(
        self,
        depth: int = 50,
        in_channels: int = 3,
        base_channels: int = 64,
        stem_channels: int | None = None,
        num_stages: int = 4,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        out_indices: Sequence[int] = (0, 1, 2, 3),
        stage_blocks: Sequence[int] | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_maxpool: bool = True,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if depth not in ARCH:
            raise ValueError(f"unsupported ResNet depth {depth} (valid: {sorted(ARCH)})")
        kind, blocks = ARCH[depth]
        blocks = tuple(stage_blocks) if stage_blocks is not None else blocks
        block = BasicBlock if kind == "basic" else Bottleneck
        stem_channels = stem_channels or base_channels
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1) if with_maxpool else nn.Identity()

        inplanes = stem_channels
        self.stages = nn.ModuleList()
        self.out_channels: list[int] = []
        for i in range(num_stages):
            planes = base_channels * 2**i
            self.stages.append(self._make_stage(block, inplanes, planes, blocks[i], strides[i],
                                                dilations[i]))
            inplanes = planes * block.expansion
            self.out_channels.append(inplanes)
        self._init_weights(zero_init_residual)
        self._freeze()

    @staticmethod
    def _make_stage(block: type[nn.Module], inplanes: int, planes: int, num_blocks: int,
                    stride: int, dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(inplanes, planes, stride, dilation, downsample)]
        inplanes = planes * block.expansion
        layers += [block(inplanes, planes, 1, dilation) for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # mmdet's default: each block starts as the identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1, *self.stages[: self.frozen_stages]]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.forward_stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
