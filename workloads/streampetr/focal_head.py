"""The auxiliary 2D FocalHead (training only): per camera image and stride-16 token, class
logits, centerness, a ltrb box around the token and the projected 3D centre; its losses
with the published weights (QFL 2.0, L1 5.0, GIoU 2.0, centers2d L1 10.0, centerness
Gaussian focal 1.0).

Matching per image runs on the HOST (scipy), from ONE device->host copy of the detached
predictions per step: focal cost 2.0 + L1 5.0 (normalised cx, cy, w, h) + GIoU 2.0 (pixels)
+ centers2d L1 10.0 (normalised). All 2D tokens are kept (the published train/infer ratio 1.0:
the original's top-k then only reorders tokens, so it is skipped).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workloads.layers.gaussian import draw_gaussians, gaussian_focal_loss
from workloads.streampetr.layers import inverse_sigmoid


def _conv_gn(c: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=bias), nn.GroupNorm(32, c),
                         nn.ReLU(inplace=True))


class FocalHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, conv_bias: bool = True) -> None:
        super().__init__()
        # The original's shared convs are plain nn.Conv2d, with a bias (focal_head.py:122-130);
        # the smoke preset keeps the bias-free convs its reference rows were measured with.
        self.shared_cls = _conv_gn(channels, conv_bias)
        self.shared_reg = _conv_gn(channels, conv_bias)
        self.cls = nn.Conv2d(channels, num_classes, 1)
        self.centerness = nn.Conv2d(channels, 1, 1)
        self.ltrb = nn.Conv2d(channels, 4, 1)
        self.center2d = nn.Conv2d(channels, 2, 1)
        nn.init.constant_(self.cls.bias, -4.595)
        nn.init.constant_(self.centerness.bias, -4.595)

    def forward(self, x: torch.Tensor, img_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """x (BN, C, H, W) -> per token (BN, HW, .): logits, centerness logit, normalised
        cxcywh box, normalised centre."""
        bn, _, h, w = x.shape
        cls_feat, reg_feat = self.shared_cls(x), self.shared_reg(x)

        def flat(t: torch.Tensor) -> torch.Tensor:
            return t.permute(0, 2, 3, 1).reshape(bn, h * w, -1)

        ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        loc = torch.stack([gx, gy], -1).reshape(1, h * w, 2)
        ltrb = flat(self.ltrb(reg_feat)).sigmoid()
        xyxy = torch.cat([loc - ltrb[..., :2], loc + ltrb[..., 2:]], -1).clamp(0, 1)
        box = torch.cat([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], -1)
        centre = (inverse_sigmoid(loc) + flat(self.center2d(reg_feat))).sigmoid()
        return dict(cls=flat(self.cls(cls_feat)), centerness=flat(self.centerness(cls_feat)), box=box,
                    centre=centre, hw=torch.tensor([h, w]), img_hw=torch.tensor(img_hw))


def _xyxy(cxcywh: torch.Tensor) -> torch.Tensor:
    return torch.cat([cxcywh[..., :2] - cxcywh[..., 2:] / 2, cxcywh[..., :2] + cxcywh[..., 2:] / 2], -1)


def giou(a: torch.Tensor, b: torch.Tensor, pairwise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(GIoU, IoU) of xyxy boxes, aligned or all pairs."""
    if pairwise:
        a, b = a[:, None], b[None]
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = (area_a + area_b - inter).clamp(min=1e-6)
    iou = inter / union
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-6), iou


def _assign_2d(cls: torch.Tensor, box: torch.Tensor, centre: torch.Tensor, gt_box: torch.Tensor,
               gt_label: torch.Tensor, gt_centre: torch.Tensor, scale: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    if len(gt_label) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    p = cls[:, gt_label].sigmoid()
    focal = -(p + 1e-12).log() * 0.25 * (1 - p) ** 2 + (1 - p + 1e-12).log() * 0.75 * p ** 2
    cost = (2.0 * focal + 5.0 * torch.cdist(box, gt_box, p=1)
            - 2.0 * giou(_xyxy(box) * scale, _xyxy(gt_box) * scale, pairwise=True)[0]
            + 10.0 * torch.cdist(centre, gt_centre, p=1))
    rows, cols = linear_sum_assignment(torch.nan_to_num(cost, 100.0, 100.0, -100.0).numpy())
    return rows.astype(np.int64), cols.astype(np.int64)


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, score: torch.Tensor, beta: float = 2.0
                       ) -> torch.Tensor:
    """mmdet's QFL (summed): negatives pushed to 0 scaled by p^beta, positives to their IoU."""
    p = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * p.pow(beta)
    pos = (labels >= 0).nonzero().squeeze(1)
    if len(pos):
        lp = logits[pos, labels[pos]]
        pos_loss = F.binary_cross_entropy_with_logits(lp, score[pos], reduction="none") * (
            score[pos] - p[pos, labels[pos]]).abs().pow(beta)
        loss = loss.index_put((pos, labels[pos]), pos_loss)
    return loss.sum()


def focal_head_losses(out: dict, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
                      centers2d: list[torch.Tensor], weights: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """`gt_*`: per image (BN lists), pixels in the augmented image."""
    w_cls, w_bbox, w_iou, w_c2d, w_ctr = weights
    cls, box, centre = out["cls"], out["box"], out["centre"]
    bn, hw, n = cls.shape
    dev = cls.device
    img_h, img_w = (int(v) for v in out["img_hw"])
    h, w = (int(v) for v in out["hw"])
    scale = torch.tensor([img_w, img_h, img_w, img_h], dtype=torch.float32)
    host = torch.cat([cls, box, centre], -1).detach().float().cpu()  # the one sync of the 2D matching
    norm = torch.tensor([img_w, img_h, img_w, img_h], dtype=torch.float32, device=dev)
    gt_cxcywh = [torch.cat([(g[:, :2] + g[:, 2:]) / 2, g[:, 2:] - g[:, :2]], 1) / norm for g in gt_boxes]
    gt_centre = [c / norm[:2] for c in centers2d]
    labels = torch.full((bn, hw), -1, dtype=torch.long, device=dev)
    img_idx, tok_idx, gt_list, c_list = [], [], [], []
    for i in range(bn):
        rows, cols = _assign_2d(host[i, :, :n], host[i, :, n:n + 4], host[i, :, n + 4:],
                                gt_cxcywh[i].detach().float().cpu(), gt_labels[i].cpu(),
                                gt_centre[i].detach().float().cpu(), scale)
        rows_t, cols_t = torch.from_numpy(rows).to(dev), torch.from_numpy(cols).to(dev)
        labels[i, rows_t] = gt_labels[i][cols_t]
        img_idx.append(torch.full_like(rows_t, i))
        tok_idx.append(rows_t)
        gt_list.append(gt_cxcywh[i][cols_t])
        c_list.append(gt_centre[i][cols_t])
    img_idx, tok_idx = torch.cat(img_idx), torch.cat(tok_idx)
    tgt_box, tgt_centre = torch.cat(gt_list), torch.cat(c_list)
    num_pos = max(len(tok_idx), 1)
    pred_box = box[img_idx, tok_idx]
    g, iou = giou(_xyxy(pred_box) * norm, _xyxy(tgt_box) * norm)
    score = torch.zeros(bn, hw, device=dev)
    score[img_idx, tok_idx] = iou.detach()
    loss_cls = quality_focal_loss(cls.reshape(-1, n), labels.reshape(-1), score.reshape(-1)) / num_pos
    # Centerness target: a Gaussian at each GT's projected centre, radius from its distance
    # to the nearest box edge in 16-px cells (>= 1).
    stride = img_w / w
    cells = [torch.div(c, stride, rounding_mode="floor").long() for c in centers2d]
    radii = [torch.ceil(torch.cat([c - b[:, :2], b[:, 2:] - c], 1).min(1).values / stride).clamp(min=1).long()
             for c, b in zip(centers2d, gt_boxes)]
    which = torch.cat([torch.full((len(c),), i, dtype=torch.long, device=dev) for i, c in enumerate(cells)])
    cells_t = torch.cat(cells)
    cells_t = torch.stack([cells_t[:, 0].clamp(0, w - 1), cells_t[:, 1].clamp(0, h - 1)], 1)
    heat = draw_gaussians(bn, h, w, which, cells_t, torch.cat(radii))
    ctr = out["centerness"].sigmoid().clamp(1e-4, 1 - 1e-4).reshape(bn, h, w)
    return {
        "frame_0_enc_loss_cls": torch.nan_to_num(w_cls * loss_cls),
        "frame_0_enc_loss_bbox": torch.nan_to_num(w_bbox * (pred_box - tgt_box).abs().sum() / num_pos),
        "frame_0_enc_loss_iou": torch.nan_to_num(w_iou * (1 - g).sum() / num_pos),
        "frame_0_centers2d_losses": torch.nan_to_num(
            w_c2d * (centre[img_idx, tok_idx] - tgt_centre).abs().sum() / num_pos),
        "frame_0_centerness_losses": torch.nan_to_num(w_ctr * gaussian_focal_loss(ctr, heat, num_pos)),
    }
