"""GANet's losses (mmdet/models/losses/ganetloss.py, detectors/ganet.py) plus the drivable term.

Names as GANet's LaneLossAggress logs them (positional `<i>_<type>`):
  0_focalloss   start-point heatmap, weight `center` (0.0 in GANet: logged, not trained)
  1_focalloss   keypoint heatmap, weight `point`
  2_regl1kploss int_offset (sub-cell remainder), masked by offset_mask, weight `error`
  3_regl1kploss pts_offset (to the start point), masked by offset_mask_weight, weight `offset`
(GANet's 4_smoothl1loss belongs to the LFA module, which is not built), then
  seg_bceloss, seg_diceloss  the drivable mask: BCE with logits and soft Dice (1 - 2|PG|/(|P|+|G|)).

Focal = CornerNet's penalty-reduced focal loss (alpha 2, beta 4) on the clamped sigmoid,
normalised by the number of positives; a constant 0 (no gradient) with 2 positives or fewer.
RegL1Kp = sum |pred*mask - gt*mask| / (count(mask > 0) + 1e-4).

loss_weighting=uncertainty (Kendall, Gal, Cipolla 2018, in the form of Gal's reference
implementation): two tasks t (lanes = the four GANet terms, drivable = the two seg terms)
with learned s_t = log sigma_t^2 (fp32, init 0, no weight decay); every term of task t is
multiplied by exp(-s_t) and one extra term `uncertainty_reg` = s_lanes + s_drivable is added,
so the total is sum_t exp(-s_t) * L_t + s_t.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.lane_multitask.config import LanesConfig

LANE_TERMS = ("0_focalloss", "1_focalloss", "2_regl1kploss", "3_regl1kploss")
SEG_TERMS = ("seg_bceloss", "seg_diceloss")


def focal_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    pos = gt.eq(1).float()
    neg = gt.lt(1).float()
    pos_loss = (torch.log(pred) * (1 - pred) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred ** 2 * (1 - gt) ** 4 * neg).sum()
    num_pos = pos.sum()
    # GANet returns a constant 0 with <= 2 positives; torch.where keeps it sync-free (no .item())
    loss = -(pos_loss + neg_loss) / num_pos.clamp(min=1)
    return torch.where(num_pos > 2, loss, torch.zeros_like(loss))


def reg_l1_kp_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    loss = F.l1_loss(pred * mask, gt * mask, reduction="sum")
    return loss / ((mask > 0).float().sum() + 1e-4)


def dice_loss(logits: torch.Tensor, gt: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    g = gt.flatten(1)
    inter = (p * g).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + g.sum(1) + eps)).mean()


def multitask_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], cfg: LanesConfig,
                   log_vars: torch.Tensor | None) -> dict[str, torch.Tensor]:
    # losses in fp32 whatever the autocast precision (log/pow of clamped sigmoids)
    o = {k: v.float() for k, v in out.items()}
    cpts = torch.clamp(torch.sigmoid(o["cpts_hm"]), 1e-4, 1 - 1e-4)
    kpts = torch.clamp(torch.sigmoid(o["kpts_hm"]), 1e-4, 1 - 1e-4)
    gt_mask = batch["drivable"].unsqueeze(1).float()
    terms = {
        "0_focalloss": focal_loss(cpts, batch["gt_cpts_hm"]) * cfg.weight_center,
        "1_focalloss": focal_loss(kpts, batch["gt_kpts_hm"]) * cfg.weight_point,
        "2_regl1kploss": reg_l1_kp_loss(o["int_offset"], batch["int_offset"],
                                        batch["offset_mask"]) * cfg.weight_error,
        "3_regl1kploss": reg_l1_kp_loss(o["pts_offset"], batch["pts_offset"],
                                        batch["offset_mask_weight"]) * cfg.weight_offset,
        "seg_bceloss": F.binary_cross_entropy_with_logits(o["drivable"], gt_mask) * cfg.weight_seg_bce,
        "seg_diceloss": dice_loss(o["drivable"], gt_mask) * cfg.weight_seg_dice,
    }
    if log_vars is None:
        return terms
    s = log_vars.float()
    weights = torch.exp(-s)
    for name in LANE_TERMS:
        terms[name] = terms[name] * weights[0]
    for name in SEG_TERMS:
        terms[name] = terms[name] * weights[1]
    terms["uncertainty_reg"] = s.sum()
    return terms
