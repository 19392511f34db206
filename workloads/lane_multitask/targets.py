"""GANet's training targets (mmdet/datasets/pipelines/lane_formating.py:CollectLanePoints),
for joint_nums=1 at one heatmap stride.

Per lane (points in input pixels): divide by the stride, fit x as a cubic spline of y (linear
below 4 points) over the lane's rows and resample it (`samples_per_row` x the heatmap height
samples: GANet's 360/8 = 45 at 40 rows), keep the samples inside the heatmap (GANet clips
the polyline to the box with shapely; the in-box samples are what remains of it), order them
bottom-up. The first (bottom-most) sample is the lane's start point. Each sample gets a
radius-2 Gaussian on the keypoint heatmap, its sub-cell remainder as `int_offset`, and the
vector to the start point as `pts_offset` (weight from `joint_weights`); start points get a
radius-4 Gaussian on the start-point heatmap.
"""
from __future__ import annotations

import numpy as np
from scipy import interpolate

SAMPLES_PER_ROW = 45 / 40


def gaussian2d(diameter: int) -> np.ndarray:
    sigma = diameter / 6
    r = (diameter - 1) / 2
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    return g


def draw_gaussian(heatmap: np.ndarray, center: tuple[int, int], radius: int) -> None:
    """CenterNet's draw_umich_gaussian: max-merge a Gaussian at integer (x, y)."""
    g = gaussian2d(2 * radius + 1)
    x, y = center
    h, w = heatmap.shape
    left, right = min(x, radius), min(w - x, radius + 1)
    top, bottom = min(y, radius), min(h - y, radius + 1)
    patch = heatmap[y - top:y + bottom, x - left:x + right]
    gpatch = g[radius - top:radius + bottom, radius - left:radius + right]
    if min(patch.shape) > 0 and min(gpatch.shape) > 0:
        np.maximum(patch, gpatch, out=patch)


def fit_lane(points: np.ndarray, h: int, w: int, samples: int) -> np.ndarray | None:
    """GANet's ploy_fitting_cube: (x, y) points -> `samples` points along y, or None."""
    pts = points[np.argsort(points[:, 1], kind="stable")]
    pts = pts[(pts[:, 0] > 0) & (pts[:, 0] < w)]
    if len(pts) < 2:
        return None
    ys, xs = pts[:, 1], pts[:, 0]
    new_y = np.linspace(max(ys[0], 0), min(ys[-1], h), samples)
    tck = interpolate.splrep(ys, xs, k=3 if len(ys) > 3 else 1)
    return np.stack([interpolate.splev(new_y, tck), new_y], 1)


def assign_weight(dis: float, span: float, weights: tuple[float, float, float]) -> float:
    step = span // 1  # joint_nums = 1
    if dis < 0:
        return weights[2]
    return weights[0] if dis < 2 * step else weights[1]


def lane_targets(lanes: list[np.ndarray], hm_size: tuple[int, int], stride: int, radius: int = 2,
                 root_radius: int = 4, joint_weights: tuple[float, float, float] = (1.0, 0.4, 0.2)
                 ) -> dict[str, np.ndarray]:
    hm_h, hm_w = hm_size
    t = {
        "gt_cpts_hm": np.zeros((1, hm_h, hm_w), np.float32),
        "gt_kpts_hm": np.zeros((1, hm_h, hm_w), np.float32),
        "int_offset": np.zeros((2, hm_h, hm_w), np.float32),
        "pts_offset": np.zeros((2, hm_h, hm_w), np.float32),
        "offset_mask": np.zeros((1, hm_h, hm_w), np.float32),
        "offset_mask_weight": np.zeros((2, hm_h, hm_w), np.float32),
    }
    samples = int(round(hm_h * SAMPLES_PER_ROW))
    for lane in lanes:
        if len(lane) < 2:
            continue
        fitted = fit_lane(np.asarray(lane, np.float64) / stride, hm_h, hm_w, samples)
        if fitted is None:
            continue
        fitted = fitted[::-1]  # bottom-up: the start point first
        inside = ((fitted[:, 0] >= 0) & (fitted[:, 0] <= hm_w - 1)
                  & (fitted[:, 1] >= 0) & (fitted[:, 1] <= hm_h - 1))
        pts = fitted[inside]
        if len(pts) < 2:
            continue
        start, end = pts[0], pts[-1]
        span = abs(start[1] - end[1])
        for x, y in pts:
            ix, iy = int(x), int(y)
            draw_gaussian(t["gt_kpts_hm"][0], (ix, iy), radius)
            t["int_offset"][:, iy, ix] = (x - ix, y - iy)
            t["offset_mask"][0, iy, ix] = 1.0  # GANet: where |remainder| < 2, i.e. always
            t["offset_mask_weight"][:, iy, ix] = assign_weight(start[1] - y, span, joint_weights)
            t["pts_offset"][:, iy, ix] = (start[0] - x, start[1] - y)
        draw_gaussian(t["gt_cpts_hm"][0], (int(start[0]), int(start[1])), root_radius)
    return t


def lfa_lane_points(lanes: list[np.ndarray], hm_size: tuple[int, int], stride: int,
                    samples: int = 41, max_lanes: int = 6) -> np.ndarray:
    """The LFA's auxiliary targets, GANet's `lane_points_l0` (CollectLanePoints.target,
    lane_formating.py:435-457): per lane (input pixels), divided by the stride, the same cubic
    fit as the heatmaps with `samples` points top-down, clipped into the map, truncated to
    integer cells, as (y, x). Returns (max_lanes, samples, 2) float32, -1 where no lane (GANet
    fails beyond max_lane_num lanes; the first max_lanes are kept here)."""
    hm_h, hm_w = hm_size
    out = -np.ones((max_lanes, samples, 2), np.float32)
    row = 0
    for lane in lanes:
        if row == max_lanes:
            break
        if len(lane) < 2:
            continue
        fitted = fit_lane(np.asarray(lane, np.float64) / stride, hm_h, hm_w, samples)
        if fitted is None:
            continue
        x = np.clip(fitted[:, 0], 0, hm_w - 1)
        y = np.clip(fitted[:, 1], 0, hm_h - 1)
        out[row] = np.stack([y, x], 1).astype(np.int32)
        row += 1
    return out
