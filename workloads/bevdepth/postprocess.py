"""Head outputs -> boxes (CenterPointBBoxCoder.decode + BEVDepthHead.get_bboxes).

Per task: sigmoid heatmap, top-K (K = max_num) over classes x cells, centre = (cell + reg)
* cell size + grid origin, z from `height`, size = exp(dim), yaw = atan2(sin, cos), velocity;
keep score > score_threshold and centres inside post_center_range; then NMS per task:
"circle" (greedy, suppress centres within squared distance nms_radius[task], keep at most
post_max_size, like mmdet3d's circle_nms) or "maxpool" (3x3 peak test before top-K).
Labels are global class indices (task offset + class within the task).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.bevdepth.config import BEVDepthConfig
from workloads.bevdepth.head import task_offsets


def circle_nms(centers: torch.Tensor, scores: torch.Tensor, thresh: float,
               post_max_size: int) -> torch.Tensor:
    """Indices kept by greedy circle NMS, best first. centers (K, 2); thresh is squared."""
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores.detach().cpu(), descending=True, stable=True)
    c = centers.detach().cpu().double()[order]
    suppress = (torch.cdist(c, c) ** 2 <= thresh)
    removed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        if len(keep) == post_max_size:
            break
        removed |= suppress[i]
    return order[torch.tensor(keep, dtype=torch.long)]


def decode_task(pred: dict[str, torch.Tensor], cfg: BEVDepthConfig
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-K candidates of one task: boxes (B, K, 9), scores (B, K), class (B, K), keep mask."""
    heat = pred["heatmap"].float().sigmoid()
    b, n, ny, nx = heat.shape
    if cfg.nms_type == "maxpool":
        heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    k = min(cfg.max_num, n * ny * nx)
    scores, idx = heat.flatten(1).topk(k, dim=1)
    cls = idx // (ny * nx)
    pix = idx % (ny * nx)

    def gather(name: str) -> torch.Tensor:
        m = pred[name].float().flatten(2)
        return m.gather(2, pix.unsqueeze(1).expand(-1, m.shape[1], -1)).transpose(1, 2)

    reg, hei, dim, rot, vel = (gather(h) for h in ("reg", "height", "dim", "rot", "vel"))
    xs = ((pix % nx).float() + reg[..., 0]) * cfg.x_bound[2] + cfg.x_bound[0]
    ys = ((pix // nx).float() + reg[..., 1]) * cfg.y_bound[2] + cfg.y_bound[0]
    yaw = torch.atan2(rot[..., 0], rot[..., 1])
    boxes = torch.cat([xs[..., None], ys[..., None], hei, dim.exp(), yaw[..., None], vel], -1)
    r = cfg.post_center_range
    keep = scores > cfg.score_threshold
    for axis in range(3):
        keep &= (boxes[..., axis] >= r[axis]) & (boxes[..., axis] <= r[axis + 3])
    return boxes, scores, cls, keep


def decode(preds: list[dict[str, torch.Tensor]], cfg: BEVDepthConfig
           ) -> list[dict[str, torch.Tensor]]:
    """One dict per sample with CPU tensors boxes (K, 9), scores (K,), labels (K,)."""
    per_sample: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
    for t, (pred, offset) in enumerate(zip(preds, task_offsets())):
        boxes, scores, cls, keep = (x.detach().cpu() for x in decode_task(pred, cfg))
        for i in range(boxes.shape[0]):
            bx, sc, lb = boxes[i][keep[i]], scores[i][keep[i]], cls[i][keep[i]] + offset
            if cfg.nms_type == "circle":
                kept = circle_nms(bx[:, :2], sc, cfg.nms_radius[t], cfg.post_max_size)
                bx, sc, lb = bx[kept], sc[kept], lb[kept]
            if t == 0:
                per_sample.append([])
            per_sample[i].append((bx, sc, lb))
    return [{"boxes": torch.cat([p[0] for p in parts]),
             "scores": torch.cat([p[1] for p in parts]),
             "labels": torch.cat([p[2] for p in parts]).long()} for parts in per_sample]
