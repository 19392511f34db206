"""YOLOv3 targets and loss, following mmdet's YOLOV3Head with its grid assignment.

Assignment is mmdet's GridAssigner (pos_iou_thr 0.5, neg_iou_thr 0.5, min_pos_iou 0) over
the priors (anchor boxes centred on their cells): the "responsible" priors are all anchors,
on every level, of the cells holding a GT centre; a responsible prior whose IoU with a GT
is > 0.5 is positive for its best GT, and each GT also gets its best responsible prior(s),
so one GT can have several positives. Negatives: priors whose IoU with every GT is <= 0.5
(the ignore threshold); the rest are ignored by the objectness loss.
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


def responsible_flags(model: YOLOv3, sizes: Sequence[tuple[int, int]], boxes: torch.Tensor) -> torch.Tensor:
    """(P,) bool over the levels-concatenated priors: every anchor of the cell holding a GT
    centre, on every level (mmdet's YOLOV3Head.responsible_flags, union over the image's GT)."""
    device, num_a = boxes.device, model.num_anchors
    flags = []
    ctr = (boxes[:, :2] + boxes[:, 2:]) / 2
    for (h, w), stride in zip(sizes, model.strides):
        level = torch.zeros(h * w, dtype=torch.bool, device=device)
        gx = (ctr[:, 0] / stride).floor().long().clamp(0, w - 1)
        gy = (ctr[:, 1] / stride).floor().long().clamp(0, h - 1)
        level[gy * w + gx] = True
        flags.append(level.repeat_interleave(num_a))
    return torch.cat(flags)


def grid_assign(priors: torch.Tensor, responsible: torch.Tensor, boxes: torch.Tensor,
                pos_iou: float = 0.5, neg_iou: float = 0.5, min_pos_iou: float = 0.0) -> torch.Tensor:
    """mmdet's GridAssigner for one image: (P,) long, -1 ignored, 0 negative, i+1 = GT i.

    Negative: IoU <= neg_iou with every GT (all priors, wherever they sit). Positive: a
    responsible prior whose best IoU among the GT (responsible priors only) is > pos_iou, to
    that GT; then for each GT in order, the responsible prior(s) of its highest IoU (if
    > min_pos_iou) go to it, later GT overwriting earlier ones (gt_max_assign_all)."""
    assigned = torch.full((priors.shape[0],), -1, dtype=torch.long, device=priors.device)
    if boxes.shape[0] == 0:
        return assigned.zero_()
    overlaps = box_iou(boxes, priors)  # (G, P)
    assigned[overlaps.amax(dim=0) <= neg_iou] = 0
    overlaps = overlaps.masked_fill(~responsible[None], -1.0)
    max_iou, argmax = overlaps.max(dim=0)
    pos = (max_iou > pos_iou) & responsible
    assigned = torch.where(pos, argmax + 1, assigned)
    gt_max = overlaps.amax(dim=1, keepdim=True)
    best = (overlaps == gt_max) & responsible[None] & (gt_max > min_pos_iou)
    gt_num = torch.arange(1, boxes.shape[0] + 1, device=priors.device)[:, None]
    last = (best.long() * gt_num).amax(dim=0)  # the last GT whose best prior this is
    return torch.where(last > 0, last, assigned)


def assign(model: YOLOv3, pred_maps: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
           gt_labels: Sequence[torch.Tensor], ignore_iou: float = 0.5, pos_iou: float = 0.5) -> Assignment:
    """Targets for a batch: GridAssigner per image (grid_assign) over the positioned priors,
    YOLOBBoxCoder targets relative to each positive's own prior."""
    device = pred_maps[0].device
    num_a = model.num_anchors
    sizes = [tuple(int(v) for v in p.shape[-2:]) for p in pred_maps]
    counts = [h * w * num_a for h, w in sizes]
    priors = torch.cat(grid_priors(model, pred_maps))
    prior_stride = torch.cat([torch.full((n,), float(s), device=device) for n, s in zip(counts, model.strides)])
    level_of = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
    offsets = torch.tensor([sum(counts[:i]) for i in range(len(counts))], device=device)
    widths = torch.tensor([w for _, w in sizes], device=device)
    neg, bidx, pidx, gts, labels = [], [], [], [], []
    for b, (boxes, lab) in enumerate(zip(gt_boxes, gt_labels)):
        boxes = boxes.float().reshape(-1, 4).to(device)
        assigned = grid_assign(priors, responsible_flags(model, sizes, boxes), boxes, pos_iou, ignore_iou)
        neg.append(assigned == 0)
        pos = torch.nonzero(assigned > 0).flatten()
        bidx.append(torch.full_like(pos, b))
        pidx.append(pos)
        gts.append(boxes[assigned[pos] - 1])
        labels.append(lab.reshape(-1).long().to(device)[assigned[pos] - 1])
    pidx_t, gt = torch.cat(pidx), torch.cat(gts) if gts else priors[:0]
    level = level_of[pidx_t]
    local = pidx_t - offsets[level]
    anchor, cell_flat = local % num_a, local // num_a
    cell = torch.stack([cell_flat % widths[level], cell_flat // widths[level]], dim=1)
    pr, stride = priors[pidx_t], prior_stride[pidx_t][:, None]
    gt_wh, pr_wh = (gt[:, 2:] - gt[:, :2]).clamp(min=EPS), pr[:, 2:] - pr[:, :2]
    offset = ((gt[:, :2] + gt[:, 2:]) - (pr[:, :2] + pr[:, 2:])) / 2 / stride
    return Assignment(torch.cat(bidx), pidx_t, level, anchor, cell, (offset + 0.5).clamp(EPS, 1 - EPS),
                      torch.log((gt_wh / pr_wh).clamp(min=EPS)), torch.cat(labels),
                      torch.stack(neg) if neg else torch.zeros(0, priors.shape[0], dtype=torch.bool, device=device))


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
