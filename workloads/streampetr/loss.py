"""StreamPETR's 3D losses: Hungarian matching, focal classification, L1 on the box code,
denoising losses; named as the original logs them (prefix `frame_0_`).

Matching runs on the HOST (scipy's linear_sum_assignment, as the original): the decoder's
detached class logits and boxes of every layer go to the host in ONE copy per training
step (`hungarian_3d`), a device sync that is inside the timed step. Cost = focal cost
(weight 2.0) + L1 (0.25) on the first 8 code dims scaled by the code weights (no velocity),
NaN/inf costs replaced by +-100. Normalisers as the original's: classification by this
rank's count (matched queries; for DN num_dn * pi / 6 * split^3), at least 1; the L1 terms by
the count averaged over the data-parallel ranks (its reduce_mean; identity in one process),
at least 1.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from workloads.streampetr.config import StreamPETRConfig


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, avg_factor: float, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """mmdet's py_sigmoid_focal_loss, summed / avg_factor; label == num_classes is background."""
    n = logits.shape[-1]
    target = F.one_hot(labels.long(), n + 1)[..., :n].to(logits.dtype)
    p = logits.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
    return loss.sum() / avg_factor


def encode_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(M, 9) x, y, z, w, l, h, yaw, vx, vy -> (M, 10) code (centres in metres)."""
    return torch.cat([boxes[:, :3], boxes[:, 3:6].clamp(min=1e-3).log(), boxes[:, 6:7].sin(),
                      boxes[:, 6:7].cos(), boxes[:, 7:9]], 1)


def decode_boxes(code: torch.Tensor) -> torch.Tensor:
    return torch.cat([code[..., :3], code[..., 3:6].clamp(-10, 10).exp(), torch.atan2(code[..., 6:7], code[..., 7:8]),
                      code[..., 8:10]], -1)


def _assign(cls: np.ndarray, boxes: np.ndarray, gt_code: np.ndarray, gt_labels: np.ndarray,
            weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    if len(gt_labels) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    p = 1 / (1 + np.exp(-cls[:, gt_labels]))
    eps, alpha = 1e-12, 0.25
    pos = -np.log(p + eps) * alpha * (1 - p) ** 2
    neg = -np.log(1 - p + eps) * (1 - alpha) * p ** 2
    w = weights[:8]
    reg = np.abs((boxes[:, None, :8] * w) - (gt_code[None, :, :8] * w)).sum(-1)
    cost = 2.0 * (pos - neg) + 0.25 * reg
    cost = np.nan_to_num(cost, nan=100.0, posinf=100.0, neginf=-100.0)
    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.int64), cols.astype(np.int64)


def hungarian_3d(cls: torch.Tensor, boxes: torch.Tensor, gt_codes: list[torch.Tensor],
                 gt_labels: list[torch.Tensor], code_weights: torch.Tensor) -> list[list[tuple]]:
    """Per (layer, sample): (query indices, gt indices), from one host copy of the predictions."""
    host = torch.cat([cls.detach(), boxes.detach()], -1).float().cpu().numpy()  # the one sync
    n = cls.shape[-1]
    codes = [g.detach().float().cpu().numpy() for g in gt_codes]
    labels = [g.cpu().numpy() for g in gt_labels]
    w = code_weights.cpu().numpy()
    return [[_assign(host[layer, b, :, :n], host[layer, b, :, n:], codes[b], labels[b], w)
             for b in range(host.shape[1])] for layer in range(host.shape[0])]


Reduce = Callable[[torch.Tensor], torch.Tensor]


def head_losses(out: dict, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
                cfg: StreamPETRConfig, mean_across_ranks: Reduce) -> dict[str, torch.Tensor]:
    """`mean_across_ranks`: the original's reduce_mean, the run strategy's
    (Strategy.mean_across_ranks; identity in a single process)."""
    cls, boxes = out["cls"], out["boxes"]
    num_layers, b, q, n = cls.shape
    dev = cls.device
    weights = torch.tensor(cfg.code_weights, device=dev)
    gt_codes = [encode_boxes(g) for g in gt_boxes]
    matches = hungarian_3d(cls, boxes, gt_codes, gt_labels, weights)
    num_pos = sum(len(rows) for rows, _ in matches[0])  # every layer matches min(queries, GT) per sample
    cls_avg = max(num_pos, 1)
    box_avg = mean_across_ranks(torch.tensor(float(num_pos), device=dev)).clamp(min=1)
    terms: dict[str, torch.Tensor] = {}
    for layer in range(num_layers):
        labels = torch.full((b, q), n, dtype=torch.long, device=dev)
        preds, targets = [], []
        for i, (rows, cols) in enumerate(matches[layer]):
            rows_t, cols_t = torch.from_numpy(rows).to(dev), torch.from_numpy(cols).to(dev)
            labels[i, rows_t] = gt_labels[i][cols_t].long()
            preds.append(boxes[layer, i, rows_t])
            targets.append(gt_codes[i][cols_t])
        loss_cls = sigmoid_focal_loss(cls[layer].reshape(-1, n), labels.reshape(-1), cls_avg)
        pred, target = torch.cat(preds), torch.cat(targets)
        valid = torch.isfinite(target).all(-1)
        l1 = ((pred - torch.nan_to_num(target)).abs() * weights * valid[:, None]).sum() / box_avg
        name = "" if layer == num_layers - 1 else f"d{layer}."
        terms[f"frame_0_{name}loss_cls"] = torch.nan_to_num(cfg.w_cls * loss_cls)
        terms[f"frame_0_{name}loss_bbox"] = torch.nan_to_num(cfg.w_bbox * l1)
    if "known" in out:
        terms.update(_dn_losses(out, cfg, weights, mean_across_ranks))
    return terms


def _dn_losses(out: dict, cfg: StreamPETRConfig, weights: torch.Tensor,
               mean_across_ranks: Reduce) -> dict[str, torch.Tensor]:
    cls, boxes = out["dn_cls"], out["dn_boxes"]
    known = out["known"]
    num_layers, _, _, n = cls.shape
    terms = {}
    num_dn = len(known["labels"])
    cls_avg = max(num_dn * math.pi / 6 * cfg.dn_split ** 3, 1.0)
    box_avg = mean_across_ranks(torch.tensor(float(num_dn), device=cls.device)).clamp(min=1)
    target = encode_boxes(known["boxes"]) if num_dn else boxes.new_zeros(0, 10)
    valid = torch.isfinite(target).all(-1)
    for layer in range(num_layers):
        pred_cls = cls[layer, known["batch_idx"], known["slot"]]
        pred_box = boxes[layer, known["batch_idx"], known["slot"]]
        loss_cls = sigmoid_focal_loss(pred_cls, known["labels"], cls_avg)
        # every DN query regresses its GT, background-labelled ones too (the original's ones weights)
        l1 = ((pred_box - torch.nan_to_num(target)).abs() * weights * valid[:, None]).sum() / box_avg
        name = "" if layer == num_layers - 1 else f"d{layer}."
        terms[f"frame_0_{name}dn_loss_cls"] = torch.nan_to_num(cfg.w_cls * loss_cls)
        terms[f"frame_0_{name}dn_loss_bbox"] = torch.nan_to_num(cfg.w_bbox * l1)
    return terms
