"""Rotated boxes (cx, cy, w, h, angle in radians): exact IoU and NMS, in plain PyTorch.

mmcv 2.1's `box_iou_rotated` / `nms_rotated` run compiled code; these compute the same
quantity exactly (up to floating point): the intersection of two rectangles is a convex
polygon whose vertices are the corners of each inside the other and the crossings of their
edges. For every pair all 24 candidates (4 + 4 corners, 16 edge crossings) are formed at
once, invalid ones masked, the valid ones ordered by angle around their mean and the area
taken with the shoelace formula: no Python loop over pairs. Pairs whose circumscribed
circles do not meet are skipped (IoU 0); the others are processed in chunks so memory stays
bounded (about CHUNK_PAIRS * 24 points at a time).

Angles follow mmcv: clockwise=True (the default) means the angle turns x towards y in an
image frame (y down); clockwise=False negates it.
"""
from __future__ import annotations

import numpy as np
import torch

from workloads.openmmlab.kernels import dispatch

CHUNK_PAIRS = 1 << 18


def corners(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 5) -> (N, 4, 2) corners in order around the box."""
    cx, cy, w, h, a = boxes.unbind(-1)
    cos, sin = torch.cos(a), torch.sin(a)
    half_x = torch.tensor([-0.5, 0.5, 0.5, -0.5], dtype=boxes.dtype, device=boxes.device)
    half_y = torch.tensor([-0.5, -0.5, 0.5, 0.5], dtype=boxes.dtype, device=boxes.device)
    dx, dy = w[:, None] * half_x, h[:, None] * half_y
    return torch.stack((cx[:, None] + dx * cos[:, None] - dy * sin[:, None],
                        cy[:, None] + dx * sin[:, None] + dy * cos[:, None]), dim=-1)


def _inside(points: torch.Tensor, boxes: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """points (P, K, 2) inside-or-on boxes (P, 5) -> (P, K) bool, `eps` (P,) of slack."""
    d = points - boxes[:, None, :2]
    cos, sin = torch.cos(boxes[:, 4:5]), torch.sin(boxes[:, 4:5])
    u = d[..., 0] * cos + d[..., 1] * sin  # along the box's w axis
    v = -d[..., 0] * sin + d[..., 1] * cos  # along its h axis
    return ((u.abs() <= boxes[:, 2:3] / 2 + eps[:, None])
            & (v.abs() <= boxes[:, 3:4] / 2 + eps[:, None]))


def _intersection_area(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Aligned pairs (P, 5), (P, 5) -> intersection areas (P,)."""
    c1, c2 = corners(b1), corners(b2)
    scale = torch.maximum(b1[:, 2:4].abs().amax(1), b2[:, 2:4].abs().amax(1))
    eps = scale * 1e-6 if b1.dtype == torch.float64 else scale * 1e-4
    # Edge crossings: edge i of box 1 (p + t r) against edge j of box 2 (q + s e).
    p, r = c1, c1.roll(-1, dims=1) - c1
    q, e = c2, c2.roll(-1, dims=1) - c2
    p, r = p[:, :, None], r[:, :, None]
    q, e = q[:, None], e[:, None]
    cross = r[..., 0] * e[..., 1] - r[..., 1] * e[..., 0]  # (P, 4, 4)
    qp = q - p
    parallel = cross.abs() <= 1e-12 * (scale * scale)[:, None, None] + 1e-30
    safe = torch.where(parallel, torch.ones_like(cross), cross)
    t = (qp[..., 0] * e[..., 1] - qp[..., 1] * e[..., 0]) / safe
    s = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / safe
    tol = 1e-6
    crossing = ~parallel & (t >= -tol) & (t <= 1 + tol) & (s >= -tol) & (s <= 1 + tol)
    points = torch.cat((c1, c2, (p + t[..., None] * r).flatten(1, 2)), dim=1)  # (P, 24, 2)
    valid = torch.cat((_inside(c1, b2, eps), _inside(c2, b1, eps), crossing.flatten(1)), dim=1)
    # Order the valid points by angle around their mean; invalid ones go last and become
    # copies of the first valid point, which adds nothing to the shoelace sum.
    count = valid.sum(1, keepdim=True)
    weights = valid.to(points.dtype)
    centre = (points * weights[..., None]).sum(1) / count.clamp(min=1).to(points.dtype)
    rel = points - centre[:, None]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # > pi: sorts last
    order = angle.argsort(dim=1)
    rel = rel.gather(1, order[..., None].expand(-1, -1, 2))
    valid = valid.gather(1, order)
    rel = torch.where(valid[..., None], rel, rel[:, :1].expand_as(rel))
    nxt = rel.roll(-1, dims=1)
    area = 0.5 * (rel[..., 0] * nxt[..., 1] - rel[..., 1] * nxt[..., 0]).sum(1)
    return torch.where(count.squeeze(1) >= 3, area.abs(), torch.zeros_like(area))


def _box_iou_rotated_portable(bboxes1: torch.Tensor, bboxes2: torch.Tensor, mode: str,
                              aligned: bool, clockwise: bool) -> torch.Tensor:
    dtype = torch.promote_types(bboxes1.dtype, torch.float32)
    b1, b2 = bboxes1.to(dtype), bboxes2.to(dtype)
    if not clockwise:
        b1 = torch.cat((b1[:, :4], -b1[:, 4:5]), 1)
        b2 = torch.cat((b2[:, :4], -b2[:, 4:5]), 1)
    rows, cols = b1.shape[0], b2.shape[0]
    if aligned:
        first, second = torch.arange(rows, device=b1.device), torch.arange(rows, device=b1.device)
    else:
        first = torch.arange(rows, device=b1.device).repeat_interleave(cols)
        second = torch.arange(cols, device=b1.device).repeat(rows)
    # Only pairs whose circumscribed circles meet can intersect: in a scene of many boxes
    # most pairs are far apart, and they skip the polygon work (their IoU is 0).
    radius1, radius2 = b1[:, 2:4].norm(dim=1) / 2, b2[:, 2:4].norm(dim=1) / 2
    near = ((b1[first, :2] - b2[second, :2]).norm(dim=1)
            <= (radius1[first] + radius2[second]) * 1.0001)
    first, second = first[near], second[near]
    inter = b1.new_zeros(first.shape[0])
    for start in range(0, first.shape[0], CHUNK_PAIRS):
        part = slice(start, start + CHUNK_PAIRS)
        inter[part] = _intersection_area(b1[first[part]], b2[second[part]])
    area1, area2 = b1[:, 2] * b1[:, 3], b2[:, 2] * b2[:, 3]
    base = area1[first] if mode == "iof" else area1[first] + area2[second] - inter
    ious = b1.new_zeros(rows if aligned else rows * cols)
    ious[near.nonzero().view(-1)] = inter / base.clamp(min=1e-12)  # mmcv guards likewise
    return (ious if aligned else ious.view(rows, cols)).to(bboxes1.dtype)


def box_iou_rotated(bboxes1: torch.Tensor, bboxes2: torch.Tensor, mode: str = "iou",
                    aligned: bool = False, clockwise: bool = True) -> torch.Tensor:
    """mmcv.ops.box_iou_rotated: (N, 5), (M, 5) -> IoU (N, M), or (N,) when aligned;
    mode "iof" divides by the first box's area."""
    if mode not in ("iou", "iof"):
        raise ValueError(f"box_iou_rotated: mode must be 'iou' or 'iof', got {mode!r}")
    if aligned and bboxes1.shape[0] != bboxes2.shape[0]:
        raise ValueError("box_iou_rotated: aligned needs as many boxes on both sides")
    return dispatch("box_iou_rotated", _box_iou_rotated_portable)(
        bboxes1, bboxes2, mode, aligned, clockwise)


def _nms_rotated_portable(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                          labels: torch.Tensor | None,
                          clockwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = dets[order]
    # One IoU matrix (a detector keeps at most a few thousand rotated candidates).
    suppress = _box_iou_rotated_portable(boxes, boxes, "iou", False, clockwise) > iou_threshold
    if labels is not None:  # boxes of different labels never suppress each other
        sorted_labels = labels[order]
        suppress &= sorted_labels[:, None] == sorted_labels[None, :]
    rows = suppress.triu(1).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):  # the greedy sweep is sequential: on the host
        if not removed[i]:
            kept.append(i)
            removed |= rows[i]
    keep = order[torch.as_tensor(kept, dtype=torch.long, device=dets.device)]
    return torch.cat((dets[keep], scores[keep].view(-1, 1).to(dets.dtype)), dim=1), keep


def nms_rotated(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                labels: torch.Tensor | None = None,
                clockwise: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """mmcv.ops.nms_rotated: dets (N, 5) -> (kept dets with scores (K, 6), keep (K,)).
    As in mmcv, an empty input returns (dets, None)."""
    if dets.shape[0] == 0:
        return dets, None
    return dispatch("nms_rotated", _nms_rotated_portable)(dets, scores, iou_threshold,
                                                          labels, clockwise)
