"""Deformable convolution v1 and v2 (modulated) with mmcv 2.1's classes and signatures.

The sampling itself is workloads.layers.deform_conv (bilinear through grid_sample, zeros
outside the image, offsets (dy, dx) per kernel tap and deformable group, mask G*K channels:
mmcv's layout). What this module adds is mmcv's surface, so configs build and checkpoints
load unchanged: the class and argument names, the parameter names and shapes (`weight`,
`bias`, the Pack variants' `conv_offset`), their initialisation (the offset convs start at
zero: a fresh DeformConv2dPack is a plain convolution, a fresh DCNv2 one half of one, its
mask being sigmoid(0)), and the kernel dispatch that lets a backend substitute its native
DCN (kernels.py).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from workloads.layers.deform_conv import deform_conv2d as _sample_and_convolve
from workloads.openmmlab.kernels import dispatch

IntPair = int | tuple[int, int]


def _modulated_portable(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None,
                        weight: torch.Tensor, bias: torch.Tensor | None, stride: IntPair,
                        padding: IntPair, dilation: IntPair, groups: int,
                        deform_groups: int) -> torch.Tensor:
    if input.dim() != 4:
        raise ValueError(f"deformable conv expects a 4D input, got {input.dim()}D")
    return _sample_and_convolve(input, offset, weight, bias, stride, padding, dilation,
                                groups, deform_groups, mask=mask)


def modulated_deform_conv2d(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                            weight: torch.Tensor, bias: torch.Tensor | None = None,
                            stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                            groups: int = 1, deform_groups: int = 1) -> torch.Tensor:
    """mmcv.ops.modulated_deform_conv2d (DCNv2): input (N, C, H, W), offset
    (N, 2*G*kh*kw, Ho, Wo), mask (N, G*kh*kw, Ho, Wo), weight (Cout, C/groups, kh, kw)."""
    return dispatch("modulated_deform_conv2d", _modulated_portable)(
        input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups)


def _deform_portable(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                     stride: IntPair, padding: IntPair, dilation: IntPair, groups: int,
                     deform_groups: int) -> torch.Tensor:
    return _modulated_portable(input, offset, None, weight, None, stride, padding, dilation,
                               groups, deform_groups)


def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                  groups: int = 1, deform_groups: int = 1, bias: bool = False,
                  im2col_step: int = 32) -> torch.Tensor:
    """mmcv.ops.deform_conv2d (DCNv1). As in mmcv there is no bias (`bias` must be False);
    `im2col_step` (mmcv's batch chunking) is accepted and has no effect here."""
    if bias:
        raise ValueError("deform_conv2d has no bias (mmcv's DCNv1 does not support one)")
    return dispatch("deform_conv2d", _deform_portable)(input, offset, weight, stride, padding,
                                                       dilation, groups, deform_groups)


def _deform_groups(deform_groups: int, kwargs: dict[str, Any]) -> int:
    """mmcv still accepts the old keyword `deformable_groups`."""
    old = kwargs.pop("deformable_groups", None)
    if kwargs:
        raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
    return deform_groups if old is None else int(old)


class _DeformBase(nn.Module):
    """The attributes mmcv's deformable convs share with nn.Conv2d (model code reads them)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair, padding: IntPair, dilation: IntPair, groups: int,
                 deform_groups: int) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} "
                             f"must be divisible by groups {groups}")
        if in_channels % deform_groups:
            raise ValueError(f"in_channels {in_channels} must be divisible by "
                             f"deform_groups {deform_groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.deform_groups = groups, deform_groups
        self.transposed = False  # read by code that treats it as an nn.Conv2d
        self.output_padding = (0,)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size))

    def _offset_conv(self, per_tap: int) -> nn.Conv2d:
        """The Pack variants' offset (and mask) predictor: same geometry, zero weights."""
        kh, kw = self.kernel_size
        conv = nn.Conv2d(self.in_channels, self.deform_groups * per_tap * kh * kw,
                         kernel_size=self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, bias=True)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()  # type: ignore[union-attr]
        return conv


class DeformConv2d(_DeformBase):
    """mmcv.ops.DeformConv2d: forward(x, offset); no bias, as in mmcv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = False,
                 im2col_step: int = 32, **kwargs: Any) -> None:
        if bias:
            raise ValueError(f"bias={bias} is not supported in DeformConv2d (as in mmcv)")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, _deform_groups(deform_groups, kwargs))
        self.im2col_step = im2col_step
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, offset, self.weight, self.stride, self.padding, self.dilation,
                             self.groups, self.deform_groups)


class DeformConv2dPack(DeformConv2d):
    """mmcv.ops.DeformConv2dPack (registered as "DCN"): predicts its own offsets."""

    _version = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conv_offset = self._offset_conv(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, self.conv_offset(x))


class ModulatedDeformConv2d(_DeformBase):
    """mmcv.ops.ModulatedDeformConv2d (DCNv2): forward(x, offset, mask)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, deform_groups: int = 1, bias: bool | str = True,
                 **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, _deform_groups(deform_groups, kwargs))
        self.bias: nn.Parameter | None
        if bias:  # mmcv tests truthiness: "auto" reaching here means a bias
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.init_weights()

    def init_weights(self) -> None:
        # Uniform in +-1/sqrt(fan_in) with fan_in over all input channels, bias zero:
        # the initialisation mmcv's DCNv2 uses (a freshly built model matches its scale).
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor, offset: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride,
                                       self.padding, self.dilation, self.groups,
                                       self.deform_groups)


class ModulatedDeformConv2dPack(ModulatedDeformConv2d):
    """mmcv.ops.ModulatedDeformConv2dPack (registered as "DCNv2"): `conv_offset` predicts
    3*G*K channels, split into the (dy, dx) offsets (first two thirds, in that order of
    concatenation) and the mask logits (last third, through a sigmoid)."""

    _version = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conv_offset = self._offset_conv(3)

    def init_weights(self) -> None:
        super().init_weights()
        if "conv_offset" in self._modules:  # re-initialising later zeroes it again
            with torch.no_grad():
                self.conv_offset.weight.zero_()
                self.conv_offset.bias.zero_()  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = self.conv_offset(x)
        third = out.shape[1] // 3
        offset, mask = out[:, :2 * third], out[:, 2 * third:].sigmoid()
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride,
                                       self.padding, self.dilation, self.groups,
                                       self.deform_groups)
