"""Box IoU and (class-wise) non-maximum suppression in plain PyTorch.

Replaces torchvision.ops / mmcv's CUDA NMS so detection workloads run on any device.
Boxes are (x1, y1, x2, y2). For the few thousand candidates a detector keeps before NMS,
the IoU matrix is computed on the boxes' device in one shot and only the greedy sweep,
which is inherently sequential, runs on the host over a boolean matrix. Larger inputs
(an untrained net can pass every prior) switch to a row-at-a-time sweep in O(N) memory.
"""
from __future__ import annotations

import numpy as np
import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Pairwise IoU of a (N, 4) and b (M, 4) -> (N, M)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=eps)


# Above this many candidates the N x N IoU matrix gets large (N=4096: 64 MiB of floats);
# past it, IoUs are computed one kept box at a time against the survivors instead.
MATRIX_MAX = 4096


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        max_keep: int | None = None) -> torch.Tensor:
    """Greedy NMS; returns indices of kept boxes, highest score first.

    A box is dropped when its IoU with a higher-scoring kept box is > iou_threshold
    (torchvision's and mmcv's convention). Ties in score keep the lower index first.
    Greedy NMS visits boxes in score order, so stopping after `max_keep` kept boxes gives
    exactly the first `max_keep` of the full result (a detector's max_per_img) for less work.
    """
    n = boxes.shape[0]
    limit = n if max_keep is None else min(n, max_keep)
    if n == 0 or limit <= 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order].float()
    if n > MATRIX_MAX:
        return order[_nms_rowwise(sorted_boxes, iou_threshold, limit)]
    # suppress[i, j]: box i (higher score) would suppress box j; only j > i matters.
    suppress = (box_iou(sorted_boxes, sorted_boxes) > iou_threshold).triu_(1)
    rows = suppress.cpu().numpy()
    removed = np.zeros(n, dtype=bool)
    kept: list[int] = []
    for i in range(n):
        if removed[i]:
            continue
        kept.append(i)
        if len(kept) == limit:
            break
        removed |= rows[i]
    keep = torch.as_tensor(kept, dtype=torch.long, device=boxes.device)
    return order[keep]


def _nms_rowwise(sorted_boxes: torch.Tensor, iou_threshold: float, limit: int) -> torch.Tensor:
    """O(N) memory greedy NMS over score-sorted boxes; returns positions in that order."""
    remaining = torch.arange(sorted_boxes.shape[0], device=sorted_boxes.device)
    kept = []
    while remaining.numel() and len(kept) < limit:
        head, rest = remaining[:1], remaining[1:]
        kept.append(head)
        iou = box_iou(sorted_boxes[head], sorted_boxes[rest])[0]
        remaining = rest[iou <= iou_threshold]
    return torch.cat(kept)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                iou_threshold: float, max_keep: int | None = None) -> torch.Tensor:
    """Class-wise NMS in one pass: boxes of different classes are shifted apart so they
    can never overlap, then one NMS runs over all of them."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    span = boxes.max() - boxes.min() + 1
    shifted = boxes + (labels.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold, max_keep)
