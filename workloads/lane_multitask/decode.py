"""GANet's test-time decoding, per image, in numpy (so the PyTorch and ONNX Runtime paths
decode the same arrays with the same code).

Follows GANetHeadFast.ktdet_decode_fast, tools/ganet/post_process.py (group_fast=True with
cluster_by_center_thr) and tools/ganet/tusimple/test_dataset.py + common.py:
1. horizontal NMS: keep a keypoint score equal to the max over its (1, 3) neighbourhood;
2. start points: NMS'd score > kpt_thr and predicted offset_y to the start < root_thr
   (strictly, not abs), in column-major order; cluster them (a point joins the first cluster
   holding a member within cluster_thr) and take each cluster's integer mean;
3. every keypoint above kpt_thr votes for start = cell + pts_offset and joins the first
   cluster mean within cluster_thr (else it is dropped); its position is cell + int_offset;
4. clusters with more than one point are lanes; scaled by the stride and mapped back to the
   source frame (int truncation, as GANet), lanes with <= points_thr points dropped;
5. sampled at h_samples by linear interpolation along the points in their order (first
   segment spanning the row; x = int(... + 0.49999)), -2 where none spans it.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    kpt_thr: float = 0.3
    root_thr: float = 1.0
    cluster_thr: float = 4.0
    points_thr: int = 7
    stride: int = 8


def horizontal_nms(heat: np.ndarray) -> np.ndarray:
    """heat * (heat == max_pool2d(heat, (1, 3), stride 1, padding (0, 1)))."""
    padded = np.pad(heat, ((0, 0), (1, 1)), constant_values=-np.inf)
    hmax = np.maximum(np.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return heat * (hmax == heat)


def _first_within(point: np.ndarray, groups: list[list[np.ndarray]], thr: float) -> int:
    for gi, group in enumerate(groups):
        for member in group:
            if math.hypot(point[0] - member[0], point[1] - member[1]) <= thr:
                return gi
    return -1


def group_keypoints(kpts_hm: np.ndarray, pts_offset: np.ndarray, int_offset: np.ndarray,
                    cfg: DecodeConfig) -> list[np.ndarray]:
    """Lanes as (n, 2) arrays of (x, y) in heatmap cells, from one image's head outputs:
    kpts_hm (h, w) probabilities, pts_offset and int_offset (2, h, w)."""
    heat = horizontal_nms(kpts_hm)
    above = heat > cfg.kpt_thr
    roots = (pts_offset[1] < cfg.root_thr) & above
    root_x, root_y = np.nonzero(roots.T)  # GANet transposes to (w, h): column-major order
    clusters: list[list[np.ndarray]] = []
    for c in np.stack([root_x, root_y], 1):
        gi = _first_within(c, clusters, cfg.cluster_thr)
        if gi < 0:
            clusters.append([c])
        else:
            clusters[gi].append(c)
    # np.mean(..., dtype=int) as GANet's choose_mean_point: integer sum, truncated mean
    centres = [np.mean(np.array(g).reshape(-1, 2), axis=0, dtype=int) for g in clusters]
    ys, xs = np.nonzero(above)  # row-major, as torch.where on the (h, w, 2) map
    groups: list[list[np.ndarray]] = [[] for _ in centres]
    for y, x in zip(ys, xs):
        root = (x + pts_offset[0, y, x], y + pts_offset[1, y, x])
        for gi, centre in enumerate(centres):
            if math.hypot(root[0] - centre[0], root[1] - centre[1]) <= cfg.cluster_thr:
                groups[gi].append(np.array([x + int_offset[0, y, x], y + int_offset[1, y, x]]))
                break
    return [np.array(g) for g in groups if len(g) > 1]


def to_source(lanes: list[np.ndarray], cfg: DecodeConfig, input_size: tuple[int, int],
              source_size: tuple[int, int], crop_top_px: int) -> list[list[tuple[int, int]]]:
    """Heatmap lanes -> integer source-pixel points (GANet adjust_result), points_thr applied."""
    h_in, w_in = input_size
    w_src, h_src = source_size
    rx, ry = w_src / w_in, (h_src - crop_top_px) / h_in
    out = []
    for lane in lanes:
        pts = [(int(x * cfg.stride * rx), int(y * cfg.stride * ry + crop_top_px)) for x, y in lane]
        if len(pts) > cfg.points_thr:
            out.append(pts)
    return out


def sample_at_rows(lane: list[tuple[int, int]], h_samples: list[int]) -> list[int]:
    """GANet's tusimple_convert_formal for one lane."""
    xs = []
    for h in h_samples:
        x = -2
        for (x0, y0), (x1, y1) in zip(lane, lane[1:]):
            lo, hi = min(y0, y1), max(y0, y1)
            if lo <= h <= hi and lo != hi:
                x = int((x1 - x0) / (y1 - y0) * (h - y0) + x0 + 0.49999)
                break
        xs.append(x)
    return xs


def decode_lanes(kpts_hm: np.ndarray, pts_offset: np.ndarray, int_offset: np.ndarray,
                 h_samples: list[int], cfg: DecodeConfig, input_size: tuple[int, int],
                 source_size: tuple[int, int], crop_top_px: int) -> list[list[int]]:
    """TuSimple lanes (x per h_sample, -2 absent) from one image's head outputs."""
    lanes = group_keypoints(kpts_hm, pts_offset, int_offset, cfg)
    points = to_source(lanes, cfg, input_size, source_size, crop_top_px)
    return [sample_at_rows(p, list(h_samples)) for p in points]
