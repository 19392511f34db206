"""Network outputs -> per-frame predictions -> the official OpenLane-V2 submission dict.

As the baseline's get_bboxes/format_preds: lanes are the sigmoid-normalised control points
mapped back to bev_range (clamped), sampled at 11 points with the Bernstein matrix
(t = i/10); lane confidence = sigmoid score; a traffic element's confidence is its best
sigmoid score over the 13 attributes and its attribute the argmax; boxes go from normalised
cxcywh to input pixels (clamped to the unpadded front view) and back to source pixels;
topology matrices are the heads' sigmoid outputs. Lane ids are 1000+i, TE ids 2000+i.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workloads.openlanev2_topology.config import OpenLaneV2Config
from workloads.datasets.bezier import bernstein_matrix
from workloads.openlanev2_topology.loss import box_cxcywh_to_xyxy


def decode(out: dict[str, torch.Tensor], batch: dict[str, Any], cfg: OpenLaneV2Config
           ) -> list[dict[str, Any]]:
    lo = torch.tensor(cfg.bev_range[:3])
    hi = torch.tensor(cfg.bev_range[3:])
    basis = torch.from_numpy(bernstein_matrix(cfg.num_lane_points, cfg.num_control_points)).float()
    preds = []
    for i, key in enumerate(batch["key"]):
        ctrl = out["lc_reg"][i].detach().float().cpu().unflatten(-1, (-1, 3))
        ctrl = torch.max(torch.min(ctrl * (hi - lo) + lo, hi), lo)
        lanes = torch.einsum("pk,qkc->qpc", basis, ctrl).float()  # autocast: bf16 matmul
        lane_conf = out["lc_cls"][i, :, 0].detach().float().sigmoid().cpu()
        order = lane_conf.argsort(descending=True)[: cfg.max_lanes]
        te_scores = out["te_cls"][i].detach().float().sigmoid().cpu()
        te_conf, te_attr = te_scores.max(-1)
        vh, vw = (float(v) for v in batch["front_valid_hw"][i].cpu())
        boxes = box_cxcywh_to_xyxy(out["te_reg"][i].detach().float().cpu())
        boxes = boxes * torch.tensor([vw, vh, vw, vh])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, vw)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, vh)
        sx, sy = (float(v) for v in batch["front_scale"][i].cpu())
        boxes = boxes / torch.tensor([sx, sy, sx, sy])
        lclc = out["lclc"][i].detach().float().sigmoid().cpu()[order][:, order]
        lcte = out["lcte"][i].detach().float().sigmoid().cpu()[order]
        preds.append({"key": tuple(key), "lanes": lanes[order].numpy(),
                      "lane_conf": lane_conf[order].numpy(), "te_boxes": boxes.numpy(),
                      "te_conf": te_conf.numpy(), "te_attr": te_attr.numpy(),
                      "lclc": lclc.numpy(), "lcte": lcte.numpy()})
    return preds


def submission(predictions: list[dict[str, Any]], method: str = "perception-harness baseline"
               ) -> dict[str, Any]:
    """The dict `openlanev2.centerline.evaluation.evaluate` and the challenge server accept."""
    results = {}
    for p in predictions:
        lanes = [{"id": 1000 + j, "points": lane.astype(np.float32), "confidence": float(c)}
                 for j, (lane, c) in enumerate(zip(p["lanes"], p["lane_conf"]))]
        tes = [{"id": 2000 + j, "attribute": int(a), "points": box.reshape(2, 2).astype(np.float32),
                "confidence": float(c)}
               for j, (box, a, c) in enumerate(zip(p["te_boxes"], p["te_attr"], p["te_conf"]))]
        results[tuple(p["key"])] = {"predictions": {
            "lane_centerline": lanes, "traffic_element": tes,
            "topology_lclc": p["lclc"].astype(np.float32),
            "topology_lcte": p["lcte"].astype(np.float32)}}
    return {"method": method, "authors": ["perception-harness"], "e-mail": "n/a",
            "institution / company": "n/a", "country / region": "US", "results": results}
