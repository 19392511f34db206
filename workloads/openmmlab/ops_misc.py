"""The small mmcv ops model code calls outside detection heads' NMS and DCN.

`sigmoid_focal_loss` (mmdet's FocalLoss calls mmcv's compiled one on CUDA tensors, its own
Python one elsewhere; a registered kernel can take its place on other devices),
`point_sample` (PointRend / Mask2Former point features), and mmcv's build-information
functions, which environment reports call.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from workloads.openmmlab.kernels import dispatch

REDUCTIONS = ("none", "mean", "sum")


def _sigmoid_focal_portable(input: torch.Tensor, target: torch.Tensor, gamma: float,
                            alpha: float, weight: torch.Tensor | None,
                            reduction: str) -> torch.Tensor:
    n, num_classes = input.shape
    # target == num_classes (or any value outside the classes) is background: no positive.
    positive = F.one_hot(target.clamp(0, num_classes), num_classes + 1)[:, :num_classes]
    positive = positive.to(input.dtype)
    p = input.sigmoid()
    # -log(p) and -log(1 - p) from logsigmoid: finite for large logits of either sign.
    pos_loss = -alpha * (1 - p).pow(gamma) * F.logsigmoid(input)
    neg_loss = -(1 - alpha) * p.pow(gamma) * F.logsigmoid(-input)
    loss = positive * pos_loss + (1 - positive) * neg_loss
    if weight is not None:  # a weight per class, applied to the rows of that target class
        in_range = target < num_classes
        row = torch.where(in_range, weight[target.clamp(0, num_classes - 1)],
                          torch.ones_like(weight[:1]).expand_as(target))
        loss = loss * row[:, None].to(loss.dtype)
    if reduction == "mean":
        return loss.sum() / n
    return loss.sum() if reduction == "sum" else loss


def sigmoid_focal_loss(input: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
                       alpha: float = 0.25, weight: torch.Tensor | None = None,
                       reduction: str = "mean") -> torch.Tensor:
    """mmcv.ops.sigmoid_focal_loss: logits (N, C), long labels (N,) in [0, C] (C: none),
    optional class weights (C,); "mean" divides the sum by N, as mmcv does."""
    if target.dtype != torch.long or input.dim() != 2 or target.shape != input.shape[:1]:
        raise ValueError("sigmoid_focal_loss: input (N, C) and long target (N,) expected")
    if weight is not None and weight.shape != input.shape[1:]:
        raise ValueError(f"sigmoid_focal_loss: weight must have C={input.shape[1]} entries")
    if reduction not in REDUCTIONS:
        raise ValueError(f"sigmoid_focal_loss: reduction must be one of {REDUCTIONS}")
    return dispatch("sigmoid_focal_loss", _sigmoid_focal_portable)(
        input, target, float(gamma), float(alpha), weight, reduction)


def point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False,
                 **kwargs: Any) -> torch.Tensor:
    """mmcv.ops.point_sample: features (N, C, H, W) at points in [0, 1] x [0, 1], (N, P, 2)
    -> (N, C, P), or (N, Hp, Wp, 2) -> (N, C, Hp, Wp); kwargs go to grid_sample."""
    flat = points.dim() == 3
    grid = (points.unsqueeze(2) if flat else points) * 2 - 1  # [0, 1] -> grid_sample's [-1, 1]
    out = F.grid_sample(input, grid.to(input.dtype), align_corners=align_corners, **kwargs)
    return out.squeeze(3) if flat else out


def get_compiler_version() -> str:
    """What mmcv's build reports as its compiler; here there is no compiled code."""
    return "none (portable PyTorch ops, workloads.openmmlab)"


def get_compiling_cuda_version() -> str:
    return "not available (portable PyTorch ops, workloads.openmmlab)"
