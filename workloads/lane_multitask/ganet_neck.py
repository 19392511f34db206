"""GANet's two neck modules in plain PyTorch: the attention encoder on C5 and the LFA.

Original: Wolfwjs/GANet 8685a61, `mmdet/models/necks/dcn_fpn.py` and
`mmdet/models/dense_heads/lanepoints_conv.py`, configured by
`configs/tusimple/final_exp_res18_s8.py:69-86` (`trans_cfg`, `dcn_point_num`).

C5 encoder (`TransConvEncoderModule`, dcn_fpn.py:74-168). A stack of position-attention layers
(`AttentionLayer`, two for GANet-S: 512 -> 64 -> 64 channels, stride 1, query/key reduced by
4) that replaces C5 before the FPN's lateral conv. Each layer: 3x3 conv-BN-ReLU to its width,
plus a fixed DETR-style sine position code (not normalised; half the channels encode the
row, half the column); one-head dot-product attention over all positions (query and key 1x1
convs to width/ratio, value 1x1 conv to the width), the attended values scaled by a learned
`gamma` (initialised 0) and added to the input, then a 3x3 conv-BN-ReLU. GANet builds the
position code once for a fixed (10, 25) C5 (a 320x800 input) on CUDA; here it is computed for
the map it is added to, on the map's device (the same values at 320x800).

LFA (`LanePointsConv`, lanepoints_conv.py:12-177; GANet-S uses one, at stride 8). Two stacks of
3x3 conv + ReLU (`cls` and `reg`, 64 -> 256 -> 256 -> 256 channels); from the reg stack, a 3x3
conv + ReLU + 1x1 conv predicts `num_points` (7) points per location as (dy, dx) from the
location, in stride-8 cells. A 1-D deformable conv (kernel 1 x num_points, no bias, 256 -> 64)
samples the cls features at those points (offsets = points - the kernel's own taps (0, j - 3)),
followed by ReLU. The points reach the deformable conv with their gradient scaled by
`gradient_mul` (0.1) and are returned unscaled for the auxiliary loss (loss.py). GANet also
builds `reppoints_pts_refine_conv/_out`, which its forward never uses; they are not built here.
The deformable conv is workloads/layers/deform_conv.py (bilinear `grid_sample`, zeros outside:
the sampling of mmdet's compiled DeformConv1D), so it runs and exports on any device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from workloads.layers.deform_conv import deform_conv2d


def sine_position_code(channels: int, height: int, width: int, device: torch.device,
                       temperature: float = 10000.0) -> torch.Tensor:
    """(1, channels, H, W): the first half encodes the row (1..H), the second the column (1..W);
    within each half, frequency pairs alternate sin, cos (DETR's PositionEmbeddingSine with
    normalize=False, as GANet's build_position_encoding calls it)."""
    if channels % 4:
        raise ValueError(f"position code needs channels divisible by 4, got {channels}")
    half = channels // 2
    i = torch.arange(half, dtype=torch.float32, device=device)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)

    def encode(n: int) -> torch.Tensor:  # (n, half)
        p = torch.arange(1, n + 1, dtype=torch.float32, device=device)[:, None] / freq
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    rows = encode(height)[:, None, :].expand(height, width, half)
    cols = encode(width)[None, :, :].expand(height, width, half)
    return torch.cat((rows, cols), dim=2).permute(2, 0, 1).unsqueeze(0)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PositionAttention(nn.Module):
    """One GANet `AttentionLayer`: pre conv, + position code, attention with a zero-initialised
    residual scale, post conv."""

    def __init__(self, cin: int, cout: int, ratio: int = 4, stride: int = 1) -> None:
        super().__init__()
        self.pre = _conv_bn_relu(cin, cout, stride)
        self.query = nn.Conv2d(cout, cout // ratio, 1)
        self.key = nn.Conv2d(cout, cout // ratio, 1)
        self.value = nn.Conv2d(cout, cout, 1)
        self.post = _conv_bn_relu(cout, cout)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """gamma * attention(x) + x over all H*W positions of x (B, C, H, W)."""
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C/r)
        k = self.key(x).flatten(2)  # (B, C/r, HW)
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # row i: weights of every j for query i
        v = self.value(x).flatten(2)  # (B, C, HW)
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        c, h, w = x.shape[1:]
        return self.post(self.attend(x + sine_position_code(c, h, w, x.device).to(x.dtype)))


class C5Encoder(nn.Module):
    """GANet's TransConvEncoderModule: PositionAttention layers in sequence."""

    def __init__(self, cin: int, widths: tuple[int, ...], ratio: int = 4) -> None:
        super().__init__()
        dims = (cin, *widths)
        self.layers = nn.ModuleList(PositionAttention(a, b, ratio) for a, b in zip(dims, dims[1:]))
        self.out_channels = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _conv_relu_stack(cin: int, cout: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class LanePointsConv(nn.Module):
    """GANet's LFA: returns (features, points); points (B, 2 * num_points, H, W) are (dy, dx)
    per point, in cells, relative to each location."""

    def __init__(self, channels: int, feat_channels: int = 256, num_points: int = 7,
                 stacked_convs: int = 3, gradient_mul: float = 0.1) -> None:
        super().__init__()
        if num_points % 2 != 1:
            raise ValueError(f"num_points must be odd, got {num_points}")
        self.num_points, self.gradient_mul = num_points, gradient_mul
        self.pad = (num_points - 1) // 2
        self.cls_convs = _conv_relu_stack(channels, feat_channels, stacked_convs)
        self.reg_convs = _conv_relu_stack(channels, feat_channels, 3)  # GANet: always 3
        self.pts_conv = nn.Conv2d(feat_channels, channels, 3, padding=1)
        self.pts_out = nn.Conv2d(channels, 2 * num_points, 1)
        # DeformConv1D(feat, point_feat=channels, kernel (1, num_points)), no bias
        self.dcn_weight = nn.Parameter(torch.empty(channels, feat_channels, 1, num_points))
        bound = 1 / math.sqrt(feat_channels * num_points)  # DeformConv1D.reset_parameters
        nn.init.uniform_(self.dcn_weight, -bound, bound)
        taps = torch.arange(-self.pad, self.pad + 1, dtype=torch.float32)
        base = torch.stack((torch.zeros_like(taps), taps), dim=1).reshape(1, -1, 1, 1)
        self.register_buffer("base_offset", base, persistent=False)  # (0, j - pad) per tap

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls_feat = self.cls_convs(x)
        points = self.pts_out(F.relu(self.pts_conv(self.reg_convs(x))))
        scaled = (1 - self.gradient_mul) * points.detach() + self.gradient_mul * points
        offset = scaled - self.base_offset.to(scaled.dtype)
        feat = deform_conv2d(cls_feat, offset.to(cls_feat.dtype), self.dcn_weight.to(cls_feat.dtype),
                             padding=(0, self.pad))
        return F.relu(feat), points


def xavier_init_convs(module: nn.Module) -> None:
    """DeformFPN.init_weights: every Conv2d of GANet's neck xavier-uniform, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
