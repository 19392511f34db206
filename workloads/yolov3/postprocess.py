"""Decode YOLOv3 prediction maps into per-image detections in original image pixels.

mmdet's YOLOV3Head test path: sigmoid on xy/objectness/classes; centre = prior centre +
(sigmoid(xy) - 0.5) * stride, size = anchor * exp(wh); drop priors with objectness below
conf_thr, keep the nms_pre most confident per level, score = class prob * objectness,
(box, class) pairs above score_thr go through class-wise NMS, max_per_img survive.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from workloads.layers.nms import batched_nms
from workloads.yolov3.model import YOLOv3, grid_priors


@dataclasses.dataclass(frozen=True)
class InferConfig:
    conf_thr: float = 0.005
    score_thr: float = 0.05
    nms_iou: float = 0.45
    nms_pre: int = 1000
    max_per_img: int = 100


def decode_level(pmap: torch.Tensor, priors: torch.Tensor, stride: int, num_anchors: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, A*(5+C), H, W) -> boxes (B, N, 4) xyxy, objectness (B, N), class probs (B, N, C)."""
    b, _, h, w = pmap.shape
    p = pmap.float().permute(0, 2, 3, 1).reshape(b, h * w * num_anchors, -1)
    centre = (priors[:, :2] + priors[:, 2:]) / 2
    half = (priors[:, 2:] - priors[:, :2]) / 2
    xy = centre + (p[..., :2].sigmoid() - 0.5) * stride
    # exp of a raw logit can overflow for an untrained net; clamp keeps boxes finite.
    wh = half * p[..., 2:4].clamp(max=10.0).exp()
    return torch.cat([xy - wh, xy + wh], dim=-1), p[..., 4].sigmoid(), p[..., 5:].sigmoid()


def postprocess(model: YOLOv3, pred_maps: Sequence[torch.Tensor], metas: Sequence[dict[str, Any]],
                cfg: InferConfig) -> list[dict[str, Any]]:
    """One dict per image: image_id, bboxes (n, 4) xyxy in original pixels, scores, labels."""
    priors = grid_priors(model, pred_maps)
    decoded = [decode_level(p, pr, s, model.num_anchors)
               for p, pr, s in zip(pred_maps, priors, model.strides)]
    results = []
    for i, meta in enumerate(metas):
        boxes, conf, cls = [], [], []
        for lvl_boxes, lvl_conf, lvl_cls in decoded:
            c = lvl_conf[i]
            idx = torch.nonzero(c >= cfg.conf_thr).flatten()
            if 0 < cfg.nms_pre < idx.numel():
                idx = idx[c[idx].topk(cfg.nms_pre).indices]
            boxes.append(lvl_boxes[i, idx])
            conf.append(c[idx])
            cls.append(lvl_cls[i, idx])
        results.append(_select(torch.cat(boxes), torch.cat(conf), torch.cat(cls), meta, cfg))
    return results


def _select(boxes: torch.Tensor, conf: torch.Tensor, cls: torch.Tensor, meta: dict[str, Any],
            cfg: InferConfig) -> dict[str, Any]:
    scores = cls * conf[:, None]
    box_idx, labels = torch.nonzero(scores > cfg.score_thr, as_tuple=True)
    boxes, scores = boxes[box_idx], scores[box_idx, labels]
    keep = batched_nms(boxes, scores, labels, cfg.nms_iou, max_keep=cfg.max_per_img)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    # Input pixels -> original pixels: divide by the per-axis resize scale, as mmdet's
    # rescale (mmdet 3.3.0 mmdet/models/dense_heads/base_dense_head.py lines 464-467, 1 /
    # scale_factor). Both the square letterbox and the keep-ratio test resize put the image
    # at the top-left with padding only at the bottom/right, so there is no offset to undo;
    # the grid priors follow each batch's padded size (grid_priors reads the maps' H, W, as
    # mmdet's yolo_head.py lines 234-237). Then clipped to the image (mmdet does not clip).
    sx, sy = meta["scale"]
    width, height = meta["orig_size"]
    boxes = boxes / boxes.new_tensor([sx, sy, sx, sy])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return {
        "image_id": meta["image_id"],
        "bboxes": boxes.cpu().numpy().astype(np.float64),
        "scores": scores.cpu().numpy().astype(np.float64),
        "labels": labels.cpu().numpy().astype(np.int64),
    }
