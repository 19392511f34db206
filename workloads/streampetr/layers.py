"""StreamPETR's small building blocks: motion-aware layer norm, SE gate, sine encodings,
CPFPN and GridMask, in plain PyTorch."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _sine(pos: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """(..., ) -> (..., num_feats): interleaved sin/cos of pos * 2pi / temperature^(2i/d)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=pos.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    x = pos[..., None] * (2 * math.pi) / dim_t
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), -1).flatten(-2)


def pos2posemb3d(pos: torch.Tensor, num_feats: int) -> torch.Tensor:
    """(..., 3) normalised points -> (..., 3 * num_feats) in the original's y, x, z order."""
    return torch.cat([_sine(pos[..., 1], num_feats), _sine(pos[..., 0], num_feats),
                      _sine(pos[..., 2], num_feats)], -1)


def pos2posemb1d(pos: torch.Tensor, num_feats: int) -> torch.Tensor:
    """(..., 1) -> (..., num_feats)."""
    return _sine(pos[..., 0], num_feats)


def nerf_encoding(x: torch.Tensor, num_freqs: int = 6) -> torch.Tensor:
    """(..., c) -> (..., c * 2 * num_freqs): sin and cos at log-spaced frequencies 2^0..2^5,
    without the input itself (StreamPETR's nerf_positional_encoding)."""
    freqs = 2.0 ** torch.linspace(0, num_freqs - 1, num_freqs, device=x.device, dtype=x.dtype)
    xb = x[..., None, :] * freqs[:, None]  # (..., F, c)
    return torch.cat([xb.sin(), xb.cos()], -2).flatten(-2)


class MLN(nn.Module):
    """Motion-aware layer norm: LN without affine, then gamma/beta predicted from `c`;
    initialised to the identity (gamma weight 0, bias 1; beta 0)."""

    def __init__(self, c_dim: int, f_dim: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Linear(c_dim, f_dim), nn.ReLU())
        self.gamma = nn.Linear(f_dim, f_dim)
        self.beta = nn.Linear(f_dim, f_dim)
        self.ln = nn.LayerNorm(f_dim, elementwise_affine=False)
        nn.init.zeros_(self.gamma.weight)
        nn.init.ones_(self.gamma.bias)
        nn.init.zeros_(self.beta.weight)
        nn.init.zeros_(self.beta.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = self.reduce(c)
        return self.gamma(c) * self.ln(x) + self.beta(c)


class SELayerLinear(nn.Module):
    """x * sigmoid(Linear(ReLU(Linear(x_se)))), the featurized PE gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(channels, channels)
        self.expand = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, x_se: torch.Tensor) -> torch.Tensor:
        return x * self.expand(torch.relu(self.reduce(x_se))).sigmoid()


class CPFPN(nn.Module):
    """1x1 laterals, nearest top-down sum, a 3x3 output conv on the finest level only
    (StreamPETR's cp_fpn with one output); no norm, no activation."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        lat = [conv(f) for conv, f in zip(self.laterals, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + nn.functional.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        return self.out_conv(lat[0])


def grid_mask(x: torch.Tensor, rng: np.random.Generator, prob: float = 0.7, ratio: float = 0.5) -> torch.Tensor:
    """GridMask(use_h, use_w, rotate=1, offset=False, ratio=0.5, mode=1, prob=0.7) on (N, C, H, W):
    one grid for the batch (as the original), built on the host and moved to x's device;
    rotate=1 draws angle 0, so no rotation."""
    if rng.random() > prob:
        return x
    h, w = x.shape[-2:]
    hh, ww = int(1.5 * h), int(1.5 * w)
    d = int(rng.integers(2, h))
    keep = min(max(int(d * ratio + 0.5), 1), d - 1)
    mask = np.ones((hh, ww), np.float32)
    st_h, st_w = int(rng.integers(d)), int(rng.integers(d))
    for i in range(hh // d):
        s = d * i + st_h
        mask[s:min(s + keep, hh), :] = 0
    for i in range(ww // d):
        s = d * i + st_w
        mask[:, s:min(s + keep, ww)] = 0
    mask = 1 - mask[(hh - h) // 2:(hh - h) // 2 + h, (ww - w) // 2:(ww - w) // 2 + w]  # mode 1
    return x * torch.from_numpy(mask).to(device=x.device, dtype=x.dtype)
