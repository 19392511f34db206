"""Losses and Hungarian matchers of the OpenLane-V2 baseline, named as its log names them.

lc_loss_cls / te_loss_cls: sigmoid focal loss (gamma 2, alpha 0.25), summed over queries and
classes and divided by the number of matched queries (mmdet DETRHead, bg_cls_weight 0).
lc_loss_bbox: L1 on the 15 normalised control-point coordinates (summed per lane) / #matched;
te_loss_bbox: L1 on normalised cxcywh / #matched; te_loss_iou: GIoU loss on input-pixel xyxy.
Matchers (mmdet HungarianAssigner / the baseline's LaneHungarianAssigner): focal cost 1.0 +
L1 cost 2.5 (cdist p=1 on normalised control points, resp. normalised cxcywh) [+ GIoU cost 1.0
for traffic elements]. The assignment itself runs on the host: the cost matrix is copied to
the CPU and solved with scipy.optimize.linear_sum_assignment (one small sync per sample).

topology_{lclc,lcte}_loss_cls, config.topology_loss:
- "original" (default): as TopologyHead.loss — the target of a (pred i, pred j) pair is the GT
  adjacency of their matched GT pair (0 for unmatched queries); mmdet's FocalLoss is called on
  the *sigmoided* head output as if it were a logit, with the label `1 - target` (class 0 =
  edge, 1 = background in mmdet's convention), mean over all B x R x C entries, weight 2.
  Because the input is a probability in (0, 1), the focal loss sees sigmoid(p) in (0.5, 0.73):
  the loss never gets small and its gradient is damped by the sigmoid's slope twice.
- "logits": the same targets and focal loss applied to the MLP's logits (the corrected form).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.openlanev2_topology.config import OpenLaneV2Config


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float
               ) -> torch.Tensor:
    """Elementwise sigmoid focal loss; targets are one-hot floats of logits' shape."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    pt = (1 - p) * targets + p * (1 - targets)
    weight = alpha * targets + (1 - alpha) * (1 - targets)
    return ce * weight * pt.pow(gamma)


def focal_cost(logits: torch.Tensor, labels: torch.Tensor, gamma: float, alpha: float
               ) -> torch.Tensor:
    """mmdet FocalLossCost: (Q, G)."""
    p = logits.sigmoid()
    eps = 1e-12
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    return pos[:, labels] - neg[:, labels]


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def box_xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def pairwise_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU between every box of a (N, 4) and b (M, 4), xyxy -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union.clamp(min=1e-6)
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-6)


def aligned_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape[0] == 0:
        return a.new_zeros(0)
    return torch.diagonal(pairwise_giou(a, b))


def hungarian(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Host-side linear_sum_assignment; returns (query indices, gt indices) on cost's device."""
    from scipy.optimize import linear_sum_assignment

    if cost.shape[1] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty
    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    return (torch.as_tensor(rows, dtype=torch.long, device=cost.device),
            torch.as_tensor(cols, dtype=torch.long, device=cost.device))


def normalise_lanes(ctrl: torch.Tensor, bev_range: tuple[float, ...]) -> torch.Tensor:
    """(..., K*3) control points in metres -> [0, 1] by bev_range, as the head regresses them."""
    lo = ctrl.new_tensor(bev_range[:3])
    hi = ctrl.new_tensor(bev_range[3:])
    pts = ctrl.unflatten(-1, (-1, 3))
    return ((pts - lo) / (hi - lo)).flatten(-2)


def match_lanes(cls: torch.Tensor, reg: torch.Tensor, gt_norm: torch.Tensor,
                cfg: OpenLaneV2Config) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.zeros(gt_norm.shape[0], dtype=torch.long, device=cls.device)
    cost = (cfg.lc_cls_weight * focal_cost(cls, labels, cfg.focal_gamma, cfg.focal_alpha)
            + cfg.lc_bbox_weight * torch.cdist(reg, gt_norm, p=1))
    return hungarian(cost)


def match_tes(cls: torch.Tensor, reg: torch.Tensor, gt_cxcywh: torch.Tensor, labels: torch.Tensor,
              scale: torch.Tensor, cfg: OpenLaneV2Config) -> tuple[torch.Tensor, torch.Tensor]:
    cost = (cfg.te_cls_weight * focal_cost(cls, labels, cfg.focal_gamma, cfg.focal_alpha)
            + cfg.te_bbox_weight * torch.cdist(reg, gt_cxcywh, p=1)
            - cfg.te_iou_weight * pairwise_giou(box_cxcywh_to_xyxy(reg) * scale,
                                                box_cxcywh_to_xyxy(gt_cxcywh) * scale))
    return hungarian(cost)


def _topology_target(shape: tuple[int, int], rows: tuple[torch.Tensor, torch.Tensor],
                     cols: tuple[torch.Tensor, torch.Tensor], adj: torch.Tensor,
                     like: torch.Tensor) -> torch.Tensor:
    target = like.new_zeros(shape)
    (rq, rg), (cq, cg) = rows, cols
    if rq.numel() and cq.numel():
        target[rq[:, None], cq[None, :]] = adj[rg][:, cg].to(like.dtype)
    return target


def topology_loss(logits: torch.Tensor, target: torch.Tensor, cfg: OpenLaneV2Config
                  ) -> torch.Tensor:
    x = logits.sigmoid() if cfg.topology_loss == "original" else logits
    return cfg.topology_weight * focal_loss(x, target, cfg.focal_gamma, cfg.focal_alpha).mean()


def baseline_losses(out: dict[str, torch.Tensor], batch: dict, cfg: OpenLaneV2Config
                    ) -> dict[str, torch.Tensor]:
    b = out["lc_cls"].shape[0]
    h, w = batch["imgs"].shape[-2:]
    lc_matches, te_matches = [], []
    lc_tgt_cls, te_tgt_cls = torch.zeros_like(out["lc_cls"]), torch.zeros_like(out["te_cls"])
    lc_l1 = out["lc_reg"].new_zeros(())
    te_l1, te_giou = out["te_reg"].new_zeros(()), out["te_reg"].new_zeros(())
    n_lc = n_te = 0
    for i in range(b):
        valid = batch["front_valid_hw"][i].to(out["te_reg"].dtype)
        scale = torch.stack([valid[1], valid[0], valid[1], valid[0]])  # img_shape, as mmdet
        gt_lc = normalise_lanes(batch["gt_lc"][i].to(out["lc_reg"].dtype), cfg.bev_range)
        gt_te = batch["gt_te"][i].to(out["te_reg"].dtype)
        gt_te_norm = box_xyxy_to_cxcywh(gt_te / scale)
        labels = batch["gt_te_labels"][i]
        with torch.no_grad():
            lq, lg = match_lanes(out["lc_cls"][i].float(), out["lc_reg"][i].float(),
                                 gt_lc.float(), cfg)
            tq, tg = match_tes(out["te_cls"][i].float(), out["te_reg"][i].float(),
                               gt_te_norm.float(), labels, scale.float(), cfg)
        lc_matches.append((lq, lg))
        te_matches.append((tq, tg))
        lc_tgt_cls[i, lq, 0] = 1.0
        te_tgt_cls[i, tq, labels[tg]] = 1.0
        lc_l1 = lc_l1 + (out["lc_reg"][i, lq] - gt_lc[lg]).abs().sum()
        te_l1 = te_l1 + (out["te_reg"][i, tq] - gt_te_norm[tg]).abs().sum()
        te_giou = te_giou + (1 - aligned_giou(box_cxcywh_to_xyxy(out["te_reg"][i, tq]) * scale,
                                              gt_te[tg])).sum()
        n_lc += int(lq.numel())
        n_te += int(tq.numel())
    n_lc, n_te = max(n_lc, 1), max(n_te, 1)
    g, a = cfg.focal_gamma, cfg.focal_alpha
    terms = {
        "lc_loss_cls": cfg.lc_cls_weight * focal_loss(out["lc_cls"], lc_tgt_cls, g, a).sum() / n_lc,
        "lc_loss_bbox": cfg.lc_bbox_weight * lc_l1 / n_lc,
        "te_loss_cls": cfg.te_cls_weight * focal_loss(out["te_cls"], te_tgt_cls, g, a).sum() / n_te,
        "te_loss_bbox": cfg.te_bbox_weight * te_l1 / n_te,
        "te_loss_iou": cfg.te_iou_weight * te_giou / n_te,
    }
    lclc_t = torch.stack([_topology_target(out["lclc"].shape[1:], lc_matches[i], lc_matches[i],
                                           batch["gt_lclc"][i], out["lclc"]) for i in range(b)])
    lcte_t = torch.stack([_topology_target(out["lcte"].shape[1:], lc_matches[i], te_matches[i],
                                           batch["gt_lcte"][i], out["lcte"]) for i in range(b)])
    terms["topology_lclc_loss_cls"] = topology_loss(out["lclc"], lclc_t, cfg)
    terms["topology_lcte_loss_cls"] = topology_loss(out["lcte"], lcte_t, cfg)
    return terms

