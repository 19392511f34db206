"""CenterPoint/CenterNet heatmap targets and their losses, in plain PyTorch.

- `gaussian_radius`: the CornerNet radius as mmdet3d computes it (its three quadratic
  cases, kept as published so radii match the original targets).
- `draw_gaussians`: all objects of a batch drawn at once: each object's Gaussian
  (sigma = (2r+1)/6, truncated to the (2r+1)^2 window around its integer centre) is
  combined into its (sample, class) map with an element-wise max, like drawing them one
  by one with `max`. The peak is exactly 1 at the centre cell.
- `gaussian_focal_loss` (alpha 2, gamma 4, summed, divided by the caller's avg factor),
  `clip_sigmoid`, and `weighted_l1_loss`.
"""
from __future__ import annotations

import math

import torch


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.5
                    ) -> torch.Tensor:
    """Element-wise radius for boxes of (height, width) in cells (mmdet3d's formula)."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def draw_gaussians(num_maps: int, height: int, width: int, map_index: torch.Tensor,
                   center: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Heatmaps (num_maps, height, width) with one Gaussian per object.

    map_index (P,) long: which map each object is drawn into (e.g. b * C + class);
    center (P, 2) integer (x, y) cells inside the map; radius (P,) integer radii.
    """
    dtype = torch.float32
    out = torch.zeros(num_maps, height * width, device=center.device, dtype=dtype)
    if center.shape[0] == 0:
        return out.view(num_maps, height, width)
    xs = torch.arange(width, device=center.device, dtype=dtype)
    ys = torch.arange(height, device=center.device, dtype=dtype)
    dx = xs.view(1, 1, -1) - center[:, 0].to(dtype).view(-1, 1, 1)
    dy = ys.view(1, -1, 1) - center[:, 1].to(dtype).view(-1, 1, 1)
    r = radius.to(dtype).view(-1, 1, 1)
    sigma = (2 * r + 1) / 6
    g = torch.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
    # The reference zeroes values below eps * max (max = 1) in float64: a no-op in float32.
    g = torch.where((dx.abs() <= r) & (dy.abs() <= r), g, torch.zeros((), dtype=dtype,
                                                                         device=g.device))
    index = map_index.view(-1, 1).expand(-1, height * width)
    out.scatter_reduce_(0, index, g.view(-1, height * width), reduce="amax", include_self=True)
    return out.view(num_maps, height, width)


def clip_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    return torch.clamp(x.sigmoid(), min=eps, max=1 - eps)


def gaussian_focal_loss(pred: torch.Tensor, target: torch.Tensor, avg_factor: torch.Tensor | float,
                        alpha: float = 2.0, gamma: float = 4.0, eps: float = 1e-12
                        ) -> torch.Tensor:
    """CenterNet focal loss on probabilities `pred` against Gaussian `target`."""
    pos = target.eq(1).to(pred.dtype)
    neg_weights = (1 - target).pow(gamma)
    pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * pos
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * neg_weights
    return (pos_loss + neg_loss).sum() / avg_factor


def weighted_l1_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                     avg_factor: torch.Tensor | float) -> torch.Tensor:
    """sum(|pred - target| * weight) / avg_factor (mmdet L1Loss with weights, 'mean')."""
    eps = torch.finfo(torch.float32).eps
    return ((pred - target).abs() * weight).sum() / (avg_factor + eps)


def gaussian_radius_scalar(height: float, width: float, min_overlap: float = 0.5) -> float:
    """Scalar version, for tests and hand checks."""
    t = gaussian_radius(torch.tensor([height], dtype=torch.float64),
                        torch.tensor([width], dtype=torch.float64), min_overlap)
    return float(t[0]) if math.isfinite(float(t[0])) else 0.0
