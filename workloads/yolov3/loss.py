"""YOLOv3 targets and loss, following mmdet's YOLOV3Head with its grid assignment.

Positives: each ground-truth box goes to the one anchor, among the 9 (3 per level) at the
cells that contain its centre, whose shape (w, h) best matches it (IoU of the two boxes
centred together). Negatives: priors (anchor boxes centred on their cells) whose IoU with
every ground truth is <= the ignore threshold; the rest are ignored by the objectness loss.
Terms as mmdet names and weights them: loss_cls, loss_conf (BCE), loss_xy (BCE, x2) and
loss_wh (MSE on log-scale, x2), each summed over the batch (mmdet's reduction='sum').
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F

from workloads.layers.nms import box_iou
from workloads.yolov3.model import YOLOv3, flatten_preds, grid_priors

EPS = 1e-6


@dataclasses.dataclass
class Assignment:
    """Positives as (image index, flat prior index) with their regression/class targets."""

    batch_idx: torch.Tensor  # (K,)
    prior_idx: torch.Tensor  # (K,) index into the levels-concatenated priors
    level: torch.Tensor  # (K,)
    anchor: torch.Tensor  # (K,) anchor index within its level
    cell: torch.Tensor  # (K, 2) grid (x, y)
    target_xy: torch.Tensor  # (K, 2) in (0, 1): centre offset within the cell
    target_wh: torch.Tensor  # (K, 2) log(gt size / anchor size)
    labels: torch.Tensor  # (K,)
    neg: torch.Tensor  # (B, P) bool: objectness target 0 is trained there


def assign(model: YOLOv3, pred_maps: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
           gt_labels: Sequence[torch.Tensor], ignore_iou: float = 0.5) -> Assignment:
    device = pred_maps[0].device
    num_a = model.num_anchors
    sizes = [tuple(p.shape[-2:]) for p in pred_maps]
    counts = torch.tensor([h * w * num_a for h, w in sizes], device=device)
    offsets = torch.cumsum(counts, 0) - counts
    priors = torch.cat(grid_priors(model, pred_maps))
    num_priors = priors.shape[0]
    batch = len(gt_boxes)

    neg = torch.ones(batch, num_priors, dtype=torch.bool, device=device)
    for b, boxes in enumerate(gt_boxes):
        if len(boxes):
            neg[b] = box_iou(priors, boxes.float()).amax(dim=1) <= ignore_iou

    n_per_img = [len(b) for b in gt_boxes]
    boxes = torch.cat([b.float().reshape(-1, 4) for b in gt_boxes]) if batch else priors[:0]
    labels = torch.cat([lb.reshape(-1).long() for lb in gt_labels]) if batch else counts[:0]
    bidx = torch.repeat_interleave(torch.arange(batch, device=device),
                                   torch.tensor(n_per_img, device=device))
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=EPS)
    ctr = (boxes[:, :2] + boxes[:, 2:]) / 2

    # Shape IoU against all 9 anchors (level-major), then the best one wins.
    anchors = torch.tensor([a for lvl in model.anchors for a in lvl], device=device)
    inter = torch.minimum(wh[:, None, :], anchors[None]).prod(-1)
    shape_iou = inter / (wh.prod(-1)[:, None] + anchors.prod(-1)[None] - inter)
    best = shape_iou.argmax(dim=1)
    level, anchor = best // num_a, best % num_a
    strides = torch.tensor(model.strides, device=device, dtype=torch.float32)[level]
    grid_h = torch.tensor([s[0] for s in sizes], device=device)[level]
    grid_w = torch.tensor([s[1] for s in sizes], device=device)[level]
    gx = torch.minimum((ctr[:, 0] / strides).floor().long().clamp(min=0), grid_w - 1)
    gy = torch.minimum((ctr[:, 1] / strides).floor().long().clamp(min=0), grid_h - 1)
    prior_idx = offsets[level] + (gy * grid_w + gx) * num_a + anchor

    # Two boxes on one prior: the later box wins, as in mmdet's per-gt assignment loop.
    key = bidx * num_priors + prior_idx
    uniq, inverse = torch.unique(key, return_inverse=True)
    order = torch.arange(len(key), device=device)
    winner = torch.full((len(uniq),), -1, dtype=torch.long, device=device)
    winner = winner.scatter_reduce(0, inverse, order, reduce="amax")
    keep = winner[inverse] == order

    cell = torch.stack([gx, gy], dim=1)
    target_xy = (ctr / strides[:, None] - cell).clamp(EPS, 1 - EPS)
    target_wh = torch.log((wh / anchors[best]).clamp(min=EPS))
    neg[bidx[keep], prior_idx[keep]] = False
    return Assignment(bidx[keep], prior_idx[keep], level[keep], anchor[keep], cell[keep],
                      target_xy[keep], target_wh[keep], labels[keep], neg)


def yolov3_loss(model: YOLOv3, pred_maps: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                gt_labels: Sequence[torch.Tensor], ignore_iou: float = 0.5) -> dict[str, torch.Tensor]:
    """The four mmdet terms for a batch of raw prediction maps (levels stride 32, 16, 8)."""
    with torch.no_grad():
        asg = assign(model, pred_maps, gt_boxes, gt_labels, ignore_iou)
    preds = flatten_preds(model, pred_maps)  # float32 even under autocast
    pos = torch.zeros(preds.shape[:2], dtype=torch.bool, device=preds.device)
    pos[asg.batch_idx, asg.prior_idx] = True
    conf_weight = (pos | asg.neg).float()
    loss_conf = (F.binary_cross_entropy_with_logits(preds[..., 4], pos.float(), reduction="none")
                 * conf_weight).sum()
    p = preds[asg.batch_idx, asg.prior_idx]
    onehot = F.one_hot(asg.labels, model.num_classes).float()
    return {
        "loss_cls": F.binary_cross_entropy_with_logits(p[:, 5:], onehot, reduction="sum"),
        "loss_conf": loss_conf,
        "loss_xy": 2.0 * F.binary_cross_entropy_with_logits(p[:, :2], asg.target_xy, reduction="sum"),
        "loss_wh": 2.0 * F.mse_loss(p[:, 2:4], asg.target_wh, reduction="sum"),
    }
