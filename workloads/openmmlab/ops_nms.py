"""NMS with mmcv 2.1's signatures: `nms` and `batched_nms` (axis-aligned boxes).

The greedy sweep is workloads.layers.nms (IoU matrix on the boxes' device, the sequential
sweep on the host, O(N) memory past a few thousand boxes). Conventions kept from mmcv: a box
is dropped when its IoU with a kept higher-scoring box is > iou_threshold; `offset=1`
measures widths as x2 - x1 + 1; `score_threshold > 0` first drops scores <= it; `max_num >
0` keeps the first max_num; numpy in, numpy out; dets are (boxes, score) rows in keep order.
One deliberate difference: equal scores keep the lower index first (a stable sort), where
mmcv's order among ties is whatever its unstable sort gives.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from workloads.layers.nms import nms as greedy_nms
from workloads.openmmlab.kernels import dispatch
from workloads.openmmlab.ops_placeholders import placeholder
from workloads.openmmlab.ops_rotated import nms_rotated

soft_nms = placeholder("soft_nms")
nms_match = placeholder("nms_match")
nms_quadri = placeholder("nms_quadri")


def _nms_portable(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                  offset: int, score_threshold: float,
                  max_num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors in, (dets (K, 5), keep (K,)) out: the contract a native "nms" kernel keeps."""
    valid = None
    if score_threshold > 0:
        valid = torch.nonzero(scores > score_threshold).view(-1)
        boxes, scores = boxes[valid], scores[valid]
    # An offset of 1 widens every box by one pixel: the same as moving x2, y2 out by one.
    shifted = boxes if offset == 0 else torch.cat((boxes[:, :2], boxes[:, 2:] + offset), 1)
    keep = greedy_nms(shifted, scores, float(iou_threshold), max_num if max_num > 0 else None)
    dets = torch.cat((boxes[keep], scores[keep].view(-1, 1).to(boxes.dtype)), dim=1)
    return dets, (keep if valid is None else valid[keep])


def nms(boxes: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray,
        iou_threshold: float | None = None, offset: int = 0, score_threshold: float = 0,
        max_num: int = -1, *, iou_thr: float | None = None) -> tuple[Any, Any]:
    """mmcv.ops.nms: boxes (N, 4) x1y1x2y2, scores (N,) -> (dets (K, 5), keep (K,)),
    numpy when the boxes are numpy. `iou_thr` is the old name of `iou_threshold`."""
    threshold = iou_threshold if iou_threshold is not None else iou_thr
    if threshold is None:
        raise TypeError("nms() needs iou_threshold")
    as_numpy = isinstance(boxes, np.ndarray)
    boxes_t = torch.from_numpy(boxes) if isinstance(boxes, np.ndarray) else boxes
    scores_t = torch.from_numpy(scores) if isinstance(scores, np.ndarray) else scores
    if boxes_t.dim() != 2 or boxes_t.size(1) != 4 or boxes_t.size(0) != scores_t.size(0):
        raise ValueError(f"nms: boxes must be (N, 4) and scores (N,), got "
                         f"{tuple(boxes_t.shape)} and {tuple(scores_t.shape)}")
    if offset not in (0, 1):
        raise ValueError(f"nms: offset must be 0 or 1, got {offset}")
    dets, keep = dispatch("nms", _nms_portable)(boxes_t, scores_t, threshold, offset,
                                                score_threshold, max_num)
    if as_numpy:
        return dets.cpu().numpy(), keep.cpu().numpy()
    return dets, keep


# What a config's nms_cfg["type"] may name (mmcv looks the string up among its NMS ops).
NMS_TYPES: dict[str, Callable[..., Any]] = {
    "nms": nms, "soft_nms": soft_nms, "nms_rotated": nms_rotated, "nms_match": nms_match,
    "nms_quadri": nms_quadri,
}


def _class_offsets(boxes: torch.Tensor, idxs: torch.Tensor) -> torch.Tensor:
    """Boxes moved apart by class so that boxes of two classes can never overlap. The step
    spans all coordinates (max - min + 1), so negative coordinates separate too; rotated
    boxes (cx, cy, w, h, a) move their centre only, by enough for any angle."""
    if boxes.size(-1) == 5:
        centres = boxes[:, :2]
        step = centres.max() - centres.min() + 2 * boxes[:, 2:4].max() + 1
        moved = centres + (idxs.to(boxes.dtype) * step)[:, None]
        return torch.cat((moved, boxes[:, 2:]), dim=1)
    step = boxes.max() - boxes.min() + 1
    return boxes + (idxs.to(boxes.dtype) * step)[:, None]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                nms_cfg: dict[str, Any] | None,
                class_agnostic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """mmcv.ops.batched_nms: NMS within each value of `idxs` (class), as mmcv does it.

    nms_cfg None: no NMS, everything sorted by score. Otherwise its keys: `type` (a name in
    NMS_TYPES or a callable, default "nms"), `class_agnostic` (overrides the argument),
    `split_thr` (default 10000: at or above that many boxes, one NMS per class in turn, to
    bound memory), `max_num` and the NMS op's own keys (`iou_threshold` or its old name
    `iou_thr`, `offset`, `score_threshold`...). Returns (dets (K, 5 or 6): boxes + score,
    keep (K,)), sorted by score.
    """
    if nms_cfg is None:
        ordered, inds = scores.sort(descending=True, stable=True)
        return torch.cat((boxes[inds], ordered[:, None]), -1), inds
    cfg = dict(nms_cfg)
    if "iou_thr" in cfg:  # the pre-1.0 key, still in many configs
        cfg.setdefault("iou_threshold", cfg.pop("iou_thr"))
    class_agnostic = cfg.pop("class_agnostic", class_agnostic)
    boxes_for_nms = boxes if class_agnostic or boxes.numel() == 0 else _class_offsets(boxes, idxs)
    op = cfg.pop("type", "nms")
    if isinstance(op, str):
        if op not in NMS_TYPES:
            raise ValueError(f"batched_nms: unknown nms type {op!r} (known: {sorted(NMS_TYPES)})")
        op = NMS_TYPES[op]
    split_thr = cfg.pop("split_thr", 10000)
    if boxes_for_nms.shape[0] < split_thr:
        dets, keep = op(boxes_for_nms, scores, **cfg)
        boxes, scores = boxes[keep], dets[:, -1]
    else:
        # One class at a time: a bounded IoU matrix. max_num applies to the merged result.
        max_num = cfg.pop("max_num", -1)
        kept = scores.new_zeros(scores.shape, dtype=torch.bool)
        rescored = scores.new_zeros(scores.shape)  # soft NMS-like ops change the scores
        for cls in torch.unique(idxs):
            members = torch.nonzero(idxs == cls).view(-1)
            dets, keep = op(boxes_for_nms[members], scores[members], **cfg)
            kept[members[keep]] = True
            rescored[members[keep]] = dets[:, -1]
        keep = torch.nonzero(kept).view(-1)
        scores, order = rescored[keep].sort(descending=True, stable=True)
        keep = keep[order]
        boxes = boxes[keep]
        if max_num > 0:
            keep, boxes, scores = keep[:max_num], boxes[:max_num], scores[:max_num]
    return torch.cat((boxes, scores[:, None].to(boxes.dtype)), -1), keep
