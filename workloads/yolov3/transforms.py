"""mmdet's YOLOv3 training pipeline (yolov3_d53_mstrain-608_273e_coco), in numpy.

Order as the config lists it: Expand (ratio 1..2, mean 0, half the time), MinIoURandomCrop
(min IoUs 0.4..0.9, min crop 0.3), Resize multi-scale keep-ratio (long and short edge
each drawn from 320..608), RandomFlip 0.5, PhotoMetricDistortion (brightness +-32,
contrast and saturation 0.5..1.5, hue +-18 degrees, random channel swap; no clipping, as
mmdet), Normalize (mean 0, std 255: the workload divides by 255), Pad to a multiple of 32
(the collate pads the batch to its largest image, right/bottom, with 0).
Images are float32 HWC RGB in 0..255 here; boxes (n, 4) xyxy pixels.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

MIN_IOUS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclasses.dataclass(frozen=True)
class PipelineParams:
    scale_range: tuple[int, int] = (320, 608)
    expand_ratio: tuple[float, float] = (1.0, 2.0)
    min_ious: tuple[float, ...] = MIN_IOUS
    min_crop_size: float = 0.3
    flip_prob: float = 0.5
    size_divisor: int = 32


def expand(rng: np.random.Generator, img: np.ndarray, boxes: np.ndarray, ratio_range: tuple[float, float]
           ) -> tuple[np.ndarray, np.ndarray]:
    if rng.integers(2):
        return img, boxes
    h, w, c = img.shape
    ratio = rng.uniform(*ratio_range)
    canvas = np.zeros((int(h * ratio), int(w * ratio), c), dtype=img.dtype)  # filled with the mean (0)
    left, top = int(rng.uniform(0, w * ratio - w)), int(rng.uniform(0, h * ratio - h))
    canvas[top:top + h, left:left + w] = img
    return canvas, boxes + np.array([left, top, left, top], dtype=boxes.dtype)


def _iou(patch: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(patch[:2], boxes[:, :2]), np.minimum(patch[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area_p = (patch[2] - patch[0]) * (patch[3] - patch[1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area_p + area_b - inter, 1e-6)


def min_iou_random_crop(rng: np.random.Generator, img: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                        min_ious: tuple[float, ...], min_crop_size: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mmdet's MinIoURandomCrop: pick a mode (no crop, or a minimum IoU), try 50 patches
    with aspect 0.5..2 whose IoU with every box reaches it and that hold some box centre;
    keep the boxes whose centre is inside, clipped to the patch."""
    h, w = img.shape[:2]
    modes = (1.0, *min_ious, 0.0)
    while True:
        mode = modes[int(rng.integers(len(modes)))]
        if mode == 1.0:
            return img, boxes, labels
        for _ in range(50):
            new_w, new_h = rng.uniform(min_crop_size * w, w), rng.uniform(min_crop_size * h, h)
            if not 0.5 <= new_h / new_w <= 2:
                continue
            left, top = rng.uniform(0, w - new_w), rng.uniform(0, h - new_h)
            patch = np.array([int(left), int(top), int(left + new_w), int(top + new_h)])
            if patch[2] == patch[0] or patch[3] == patch[1]:
                continue
            if len(boxes):
                if _iou(patch, boxes).min() < mode:
                    continue
                ctr = (boxes[:, :2] + boxes[:, 2:]) / 2
                inside = ((ctr[:, 0] > patch[0]) & (ctr[:, 1] > patch[1]) & (ctr[:, 0] < patch[2])
                          & (ctr[:, 1] < patch[3]))
                if not inside.any():
                    continue
                boxes, labels = boxes[inside].copy(), labels[inside]
                boxes[:, 2:] = np.minimum(boxes[:, 2:], patch[2:])
                boxes[:, :2] = np.maximum(boxes[:, :2], patch[:2])
                boxes -= np.tile(patch[:2], 2)
            return img[patch[1]:patch[3], patch[0]:patch[2]], boxes, labels


def random_scale_resize(rng: np.random.Generator, img: np.ndarray, boxes: np.ndarray,
                        scale_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """mmcv Resize, multiscale 'range', keep_ratio: long and short edge drawn independently."""
    lo, hi = scale_range
    long_edge, short_edge = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    h, w = img.shape[:2]
    factor = min(max(long_edge, short_edge) / max(h, w), min(long_edge, short_edge) / min(h, w))
    nw, nh = int(w * factor + 0.5), int(h * factor + 0.5)
    channels = [np.asarray(Image.fromarray(img[..., c]).resize((nw, nh), Image.BILINEAR)) for c in range(3)]
    return np.stack(channels, -1), boxes * np.array([nw / w, nh / h, nw / w, nh / h], dtype=boxes.dtype)


def rgb_to_hsv(img: np.ndarray) -> np.ndarray:
    """OpenCV's float convention: H in degrees 0..360, S 0..1, V as the input scale."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    v, mn = img.max(-1), img.min(-1)
    d = v - mn
    s = np.where(v != 0, d / np.where(v != 0, v, 1), 0.0)
    safe = np.where(d != 0, d, 1)
    h = np.where(v == r, 60 * (g - b) / safe, np.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe))
    h = np.where(d == 0, 0.0, h)
    return np.stack([np.where(h < 0, h + 360, h), s, v], -1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0] / 60.0, hsv[..., 1], hsv[..., 2]
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(hsv.shape, dtype=np.float32)
    for k, rgb in enumerate(table):
        m = i == k
        for c in range(3):
            out[..., c][m] = rgb[c][m]
    return out


def photometric_distortion(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """mmdet's PhotoMetricDistortion on a float image (each step with probability 1/2)."""
    img = img.astype(np.float32)
    if rng.integers(2):
        img = img + rng.uniform(-32, 32)
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        img = img * rng.uniform(0.5, 1.5)
    hsv = rgb_to_hsv(img)
    if rng.integers(2):
        hsv[..., 1] *= rng.uniform(0.5, 1.5)
    if rng.integers(2):
        hsv[..., 0] += rng.uniform(-18, 18)
        hsv[..., 0] = np.where(hsv[..., 0] > 360, hsv[..., 0] - 360, hsv[..., 0])
        hsv[..., 0] = np.where(hsv[..., 0] < 0, hsv[..., 0] + 360, hsv[..., 0])
    img = hsv_to_rgb(hsv)
    if not contrast_first and rng.integers(2):
        img = img * rng.uniform(0.5, 1.5)
    if rng.integers(2):
        img = img[..., rng.permutation(3)]
    return img


def mmdet_train_pipeline(rng: np.random.Generator, img: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                         p: PipelineParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8/float HWC RGB image -> float32 CHW padded to size_divisor, boxes, labels."""
    img = img.astype(np.float32)
    img, boxes = expand(rng, img, boxes, p.expand_ratio)
    img, boxes, labels = min_iou_random_crop(rng, img, boxes, labels, p.min_ious, p.min_crop_size)
    img, boxes = random_scale_resize(rng, img, boxes, p.scale_range)
    if rng.random() < p.flip_prob:
        w = img.shape[1]
        img = img[:, ::-1]
        boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    img = photometric_distortion(rng, img)
    h, w = img.shape[:2]
    d = p.size_divisor
    padded = np.zeros((-(-h // d) * d, -(-w // d) * d, 3), dtype=np.float32)
    padded[:h, :w] = img
    return np.ascontiguousarray(padded.transpose(2, 0, 1)), boxes.astype(np.float32), labels
