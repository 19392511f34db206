"""Deformable convolution (DCNv1) in plain PyTorch, sampling with `grid_sample`.

Stands in for mmcv's CUDA `DeformConv2d`/`DeformConv2dPack` (the `DCN` conv type BEVDepth's
DepthNet uses) so the model runs on any device. Semantics follow mmcv: offsets have
2*K channels per deformable group, (dy, dx) for kernel tap k = i*kw + j in that order;
sampling is bilinear with zeros outside the image. An optional modulation mask (DCNv2,
G*K channels, tap k of group g at g*K + k) scales each sampled value; without it this is
DCNv1. With zero offsets (and mask 1) the result equals `F.conv2d` (the Pack variant
initialises its offset conv to zero).

Cost: the sampled columns (N, C, K, Ho*Wo) are materialised, like mmcv's im2col.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, stride: int | tuple[int, int] = 1,
                  padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                  groups: int = 1, deform_groups: int = 1,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Functional deformable conv: x (N, C, H, W), offset (N, G*2*kh*kw, Ho, Wo), mask
    (N, G*kh*kw, Ho, Wo) or None."""
    n, c, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    k = kh * kw
    ho, wo = offset.shape[-2:]
    g = deform_groups
    off = offset.view(n, g, k, 2, ho, wo)

    # Regular sampling positions: output location * stride - padding + tap * dilation.
    base_y = torch.arange(ho, device=x.device, dtype=x.dtype) * sh - ph
    base_x = torch.arange(wo, device=x.device, dtype=x.dtype) * sw - pw
    tap_y = (torch.arange(kh, device=x.device, dtype=x.dtype) * dh).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=x.device, dtype=x.dtype) * dw).repeat(kh)
    pos_y = base_y.view(1, 1, 1, ho, 1) + tap_y.view(1, 1, k, 1, 1) + off[:, :, :, 0]
    pos_x = base_x.view(1, 1, 1, 1, wo) + tap_x.view(1, 1, k, 1, 1) + off[:, :, :, 1]
    # Pixel -> normalised coordinates for align_corners=False (valid for any H, W).
    grid = torch.stack(((2 * pos_x + 1) / w - 1, (2 * pos_y + 1) / h - 1), dim=-1)
    grid = grid.view(n * g, k * ho, wo, 2)

    cols = F.grid_sample(x.reshape(n * g, c // g, h, w), grid, mode="bilinear",
                         padding_mode="zeros", align_corners=False)
    if mask is not None:  # DCNv2: one weight per group, tap and output location
        cols = cols * mask.reshape(n * g, 1, k * ho, wo).to(cols.dtype)
    # (N*G, C/G, K*Ho, Wo) -> (N, groups, C/groups * K, Ho*Wo), channel-major like im2col.
    cols = cols.view(n, c, k, ho * wo).reshape(n, groups, (c // groups) * k, ho * wo)
    out = torch.matmul(weight.view(groups, cout // groups, cin_g * k), cols)
    out = out.reshape(n, cout, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class DeformConv2d(nn.Module):
    """Deformable conv taking its offsets as a second input (mmcv `DeformConv2d`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, deform_groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups or in_channels % deform_groups:
            raise ValueError("channels must be divisible by groups and deform_groups")
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.deform_groups = groups, deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, self.groups, self.deform_groups)


class DeformConv2dPack(DeformConv2d):
    """Deformable conv that predicts its own offsets with a zero-initialised conv (mmcv `DCN`)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        kh, kw = self.kernel_size
        self.conv_offset = nn.Conv2d(self.weight.shape[1] * self.groups,
                                     self.deform_groups * 2 * kh * kw, self.kernel_size,
                                     stride=self.stride, padding=self.padding,
                                     dilation=self.dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, self.conv_offset(x) if offset is None else offset)
