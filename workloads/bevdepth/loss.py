"""BEVDepth losses: CenterPoint detection terms and the lidar depth supervision.

- loss_heatmap: Gaussian focal loss on clip_sigmoid(heatmap) per task, divided by the
  number of peak cells (mean over ranks, clamped to >= 1), summed over tasks.
- loss_bbox: L1 on [reg, height, dim, rot, vel] at the GT cells, weighted by code_weights,
  divided by the number of objects of the task (mean over ranks, clamped to >= 1e-4),
  x 0.25, summed over tasks.
- loss_depth: BEVDepth's get_depth_loss: the lidar depth image is downsampled to the
  feature grid by the minimum non-zero depth of each stride x stride patch, binned as
  (d - (d_min - step)) / step truncated (bin 0 and bins past D+1 mean "no label"), one-hot;
  BCE of the softmax depth against it at labelled cells, / labelled cells, x 3.0. In fp32.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from workloads.bevdepth.config import BEVDepthConfig
from workloads.bevdepth.head import Targets, gather_box_preds
from workloads.layers.gaussian import clip_sigmoid, gaussian_focal_loss, weighted_l1_loss


def detection_losses(preds: list[dict[str, torch.Tensor]], targets: Targets, cfg: BEVDepthConfig,
                     mean_across_ranks: Callable[[torch.Tensor], torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """`mean_across_ranks`: mmdet's reduce_mean, the run strategy's (Strategy.mean_across_ranks):
    BEVDepth normalises the heatmap and box losses by the GLOBAL mean count, so a rank with
    few objects does not weigh them up; identity in a single process."""
    loss_heatmap = preds[0]["heatmap"].new_zeros(())
    loss_bbox = preds[0]["heatmap"].new_zeros(())
    for t, pred in enumerate(preds):
        heat_target = targets.heatmaps[t]
        num_pos = mean_across_ranks(heat_target.eq(1).float().sum()).clamp(min=1)
        loss_heatmap = loss_heatmap + gaussian_focal_loss(
            clip_sigmoid(pred["heatmap"].float()), heat_target, num_pos)
        box_pred = gather_box_preds({k: v.float() for k, v in pred.items()},
                                    targets.batch_idx, targets.ind)
        num = mean_across_ranks(targets.num_objs[t].float()).clamp(min=1e-4)
        loss_bbox = loss_bbox + cfg.bbox_loss_weight * weighted_l1_loss(
            box_pred, targets.boxes, targets.weights[t], num)
    return {"loss_heatmap": loss_heatmap, "loss_bbox": loss_bbox}


def downsample_depth_labels(depth_labels: torch.Tensor, cfg: BEVDepthConfig) -> torch.Tensor:
    """(B, N, H, W) lidar depth -> (B*N*h*w, D) one-hot depth-bin targets."""
    b, n, h, w = depth_labels.shape
    s = cfg.downsample_factor
    d = depth_labels.float().view(b * n, h // s, s, w // s, s).permute(0, 1, 3, 2, 4)
    d = d.reshape(-1, s * s)
    d = torch.where(d == 0.0, torch.full_like(d, 1e5), d).amin(dim=-1)
    lo, _, step = cfg.d_bound
    num_bins = cfg.num_depth_bins
    d = (d - (lo - step)) / step
    d = torch.where((d < num_bins + 1) & (d >= 0.0), d, torch.zeros_like(d))
    return F.one_hot(d.long(), num_classes=num_bins + 1)[:, 1:].float()


def depth_loss(depth_labels: torch.Tensor, depth_probs: torch.Tensor, cfg: BEVDepthConfig
               ) -> torch.Tensor:
    """depth_probs (B*N, D, h, w) softmax output of the DepthNet."""
    target = downsample_depth_labels(depth_labels, cfg)
    pred = depth_probs.float().permute(0, 2, 3, 1).reshape(-1, cfg.num_depth_bins)
    fg = (target.amax(dim=1) > 0).float()
    with torch.autocast(device_type=pred.device.type, enabled=False):
        # Masking by weight (not boolean indexing) keeps shapes static; BCE is clamped
        # like torch's (log >= -100), so background rows contribute exactly 0.
        bce = F.binary_cross_entropy(pred, target, reduction="none").sum(dim=1)
        loss = (bce * fg).sum() / fg.sum().clamp(min=1.0)
    return cfg.depth_loss_weight * loss
