"""mmdet's YOLOv3 training pipeline (yolov3_d53_mstrain-608_273e_coco), in numpy.

Order as the config lists it: Expand (ratio 1..2, mean 0, half the time), MinIoURandomCrop
(min IoUs 0.4..0.9, min crop 0.3), Resize multi-scale keep-ratio (long and short edge
each drawn from 320..608), RandomFlip 0.5, PhotoMetricDistortion (brightness +-32,
contrast and saturation 0.5..1.5, hue +-18 degrees, random channel swap; no clipping, as
mmdet), Normalize (mean 0, std 255: the workload divides by 255), Pad to a multiple of 32
(the collate pads the batch to its largest image, right/bottom, with 0).
Images are float32 HWC RGB in 0..255 here; boxes (n, 4) xyxy pixels.

The test side (KeepRatioCocoDetection, the full preset's evaluation) is mmdet's test
pipeline: Resize keep_ratio to the test scale, then the data preprocessor's pad to 32.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from workloads.datasets.coco import CocoDetection

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


# --------------------------------------------------------------------------- test pipeline
# mmdet 3.3.0 configs/yolo/yolov3_d53_8xb8-ms-608-273e_coco.py (as installed in the wheel,
# mmdet/.mim/configs/yolo/): test_pipeline (lines 101-109) = LoadImageFromFile,
# Resize(scale=(608, 608), keep_ratio=True) (line 103), LoadAnnotations, PackDetInputs; the
# ms-416 and 320 variants change only the scale (yolov3_d53_8xb8-ms-416-273e_coco.py line 19,
# yolov3_d53_8xb8-320-273e_coco.py lines 3 and 20). data_preprocessor (lines 3-8):
# DetDataPreprocessor, mean 0, std 255, bgr_to_rgb, pad_size_divisor=32; val batch_size=1
# (line 126).


def keep_ratio_size(w: int, h: int, scale: int | tuple[int, int]) -> tuple[int, int]:
    """(new_w, new_h) of mmcv's keep-ratio Resize at `scale` (an int = a square scale).

    mmcv 2.1.0 mmcv/image/geometric.py rescale_size, lines 242-245: the factor is
    min(long edge of scale / long side, short edge of scale / short side); _scale_size, line
    33: each side is int(side * factor + 0.5)."""
    long_edge, short_edge = (scale, scale) if isinstance(scale, int) else (max(scale), min(scale))
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def resize_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HWC -> uint8 HWC of size (w, h), as cv2.resize(INTER_LINEAR) (mmcv Resize's
    default: backend 'cv2', interpolation 'bilinear', mmcv/transforms/processing.py lines
    138-139): half-pixel centres, edge clamped, no antialiasing (unlike PIL's bilinear when
    shrinking). cv2 rounds through 11-bit fixed point, so pixels may differ by 1."""
    w, h = size
    if (h, w) == img.shape[:2]:
        return img.copy()
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def pad_to_divisor(image: torch.Tensor, divisor: int) -> torch.Tensor:
    """(C, H, W) -> (C, ceil(H/d)*d, ceil(W/d)*d), zeros at the bottom/right only.

    mmengine 0.10.7 mmengine/model/utils.py stack_batch: the batch's max size rounded up to
    the divisor (lines 47-48), padded right and bottom (line 61); called by
    ImgDataPreprocessor.forward (mmengine/model/base_model/data_preprocessor.py line 278)
    after normalising, so mmdet's pad value 0 is pixel 0 with mean 0. Padding each image
    to its own multiple here and the collate to the batch's largest gives the same size:
    the max of multiples of d is the max size rounded up to d."""
    h, w = image.shape[-2:]
    return F.pad(image, (0, -w % divisor, 0, -h % divisor))


def keep_ratio_resize(img: np.ndarray, scale: int, size_divisor: int = 32
                      ) -> tuple[torch.Tensor, tuple[float, float]]:
    """uint8 HWC RGB -> (3, H', W') uint8 padded to size_divisor (bottom/right) and the
    per-axis scale (new_w / w, new_h / h) that mmcv records as scale_factor
    (mmcv/transforms/processing.py lines 182-183, 193) and mmdet divides the predictions by
    (mmdet/models/dense_heads/base_dense_head.py lines 464-467). No offset: the image sits
    at the top-left of its padding."""
    h, w = img.shape[:2]
    nw, nh = keep_ratio_size(w, h, scale)
    resized = torch.from_numpy(resize_bilinear(img, (nw, nh))).permute(2, 0, 1).contiguous()
    return pad_to_divisor(resized, size_divisor), (nw / w, nh / h)


class KeepRatioCocoDetection(CocoDetection):
    """A COCO split with mmdet's YOLOv3 test pipeline instead of the square letterbox:
    keep-ratio resize to `input_size` (the test scale), padded to a multiple of 32 at the
    bottom/right; the collate pads a batch to its largest image (a multiple of 32 too).
    Items as CocoDetection's: image uint8 (3, H', W'), boxes in input pixels, meta scale."""

    def __init__(self, root: Any, split: str, input_size: int, size_divisor: int = 32) -> None:
        super().__init__(root, split, input_size)
        self.size_divisor = size_divisor

    def resize(self, img: Any) -> tuple[torch.Tensor, tuple[float, float]]:
        return keep_ratio_resize(np.asarray(img), self.input_size, self.size_divisor)
