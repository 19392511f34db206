"""GANet's losses (mmdet/models/losses/ganetloss.py, detectors/ganet.py) plus the drivable term.

Names as GANet's LaneLossAggress logs them (positional `<i>_<type>`):
  0_focalloss   start-point heatmap, weight `center` (0.0 in GANet: logged, not trained)
  1_focalloss   keypoint heatmap, weight `point`
  2_regl1kploss int_offset (sub-cell remainder), masked by offset_mask, weight `error`
  3_regl1kploss pts_offset (to the start point), masked by offset_mask_weight, weight `offset`
  4_smoothl1loss the LFA's points against their matched lane points, weight `aux` (only
                when the LFA is built: `lfa`; see lfa_aux_loss), then
  seg_bceloss, seg_diceloss  the drivable mask: BCE with logits and soft Dice (1 - 2|PG|/(|P|+|G|)).

Focal = CornerNet's penalty-reduced focal loss (alpha 2, beta 4) on the clamped sigmoid,
normalised by the number of positives; a constant 0 (no gradient) with 2 positives or fewer.
RegL1Kp = sum |pred*mask - gt*mask| / (count(mask > 0) + 1e-4).

loss_weighting=uncertainty (Kendall, Gal, Cipolla 2018, in the form of Gal's reference
implementation): two tasks t (lanes = the GANet terms, drivable = the two seg terms)
with learned s_t = log sigma_t^2 (fp32, init 0, no weight decay); every term of task t is
multiplied by exp(-s_t) and one extra term `uncertainty_reg` = s_lanes + s_drivable is added,
so the total is sum_t exp(-s_t) * L_t + s_t.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from workloads.lane_multitask.config import LanesConfig

LANE_TERMS = ("0_focalloss", "1_focalloss", "2_regl1kploss", "3_regl1kploss", "4_smoothl1loss")
SMOOTH_L1_BETA = 1 / 9  # LaneLossAggress's SmoothL1Loss (ganetloss.py:96-101)
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


def lfa_aux_loss(points: torch.Tensor, lane_points: torch.Tensor,
                 beta: float = SMOOTH_L1_BETA) -> torch.Tensor:
    """GANet's `4_smoothl1loss` before its weight (detectors/ganet.py:89-102 with
    point_scale=False, core/bbox/assigners/lane_assigner.py, losses/smooth_l1_loss.py).

    points (B, 2K, H, W): the LFA's K points per location as (dy, dx) from it, in cells.
    lane_points (B, L, G, 2): G integer (y, x) cells per lane, -1 rows for absent lanes.
    For every lane cell g, the K points predicted there (made absolute by adding g) are
    matched one-to-one to K of the lane's G cells by the Hungarian algorithm on squared
    distances (scipy, on the CPU, as GANet); the loss is smooth L1 (beta 1/9) between points
    and matched cells, averaged over all B * L * G * K * 2 coordinates, absent lanes counting
    as zeros. A lane counts when its first (top-most) cell has y > 0, GANet's validity test
    (so a lane that reaches the top row is left out, as there). GANet matches against every
    lane cell here: sample_gt_points[0] = sample_per_lane[0] (41) selects all of them.
    """
    b, c, h, w = points.shape
    k = c // 2
    _, n_lanes, g, _ = lane_points.shape
    gt = lane_points.to(device=points.device, dtype=torch.float32)
    cells = gt.long()
    valid = cells[:, :, 0, 0] > 0  # (B, L)
    ys, xs = cells[..., 0].clamp(0, h - 1), cells[..., 1].clamp(0, w - 1)  # (B, L, G)
    flat = (ys * w + xs).view(b, 1, n_lanes * g).expand(b, c, n_lanes * g)
    rel = points.float().flatten(2).gather(2, flat).view(b, k, 2, n_lanes, g)
    where = torch.stack((ys, xs), dim=1).view(b, 1, 2, n_lanes, g).float()
    pred = (rel + where).permute(0, 3, 4, 1, 2)  # (B, L, G locations, K, 2)
    matched_np = np.zeros((b, n_lanes, g, k), np.int64)
    pairs = valid.nonzero().tolist()
    if pairs:
        cost = ((pred.detach()[:, :, :, :, None, :] - gt[:, :, None, None, :, :]) ** 2).sum(-1)
        cost_np = cost[valid].cpu().numpy()  # (valid lanes, G, K, G)
        for (bi, li), lane_cost in zip(pairs, cost_np):
            for loc in range(g):
                matched_np[bi, li, loc] = linear_sum_assignment(lane_cost[loc])[1]
    matched = torch.from_numpy(matched_np).to(points.device)
    index = matched.view(b, n_lanes, g * k, 1).expand(b, n_lanes, g * k, 2)
    target = gt.gather(2, index).view(b, n_lanes, g, k, 2)
    keep = valid.view(b, n_lanes, 1, 1, 1).float()
    diff = (pred * keep - target * keep).abs()
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return loss.mean()


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
    }
    if "lfa_points" in o:
        terms["4_smoothl1loss"] = lfa_aux_loss(o["lfa_points"], batch["lane_points"]) * cfg.weight_aux
    terms["seg_bceloss"] = F.binary_cross_entropy_with_logits(o["drivable"], gt_mask) * cfg.weight_seg_bce
    terms["seg_diceloss"] = dice_loss(o["drivable"], gt_mask) * cfg.weight_seg_dice
    if log_vars is None:
        return terms
    s = log_vars.float()
    weights = torch.exp(-s)
    for name in LANE_TERMS:
        if name in terms:
            terms[name] = terms[name] * weights[0]
    for name in SEG_TERMS:
        terms[name] = terms[name] * weights[1]
    terms["uncertainty_reg"] = s.sum()
    return terms
