"""mmdet's YOLOv3 training pipeline (full preset): geometry of each step, colour space."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workloads.datasets.coco import CocoDetection, SyntheticSpec, collate, write_synthetic_coco
from workloads.yolov3.transforms import (
    PipelineParams,
    _iou,
    expand,
    hsv_to_rgb,
    min_iou_random_crop,
    mmdet_train_pipeline,
    random_scale_resize,
    rgb_to_hsv,
)


def _image(h: int = 120, w: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    boxes = np.array([[10, 20, 60, 80], [100, 30, 180, 110]], dtype=np.float32)
    return img, boxes, np.array([0, 2])


def test_hsv_round_trip_and_known_values() -> None:
    img, _, _ = _image()
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(img)), img, atol=1e-3)
    hsv = rgb_to_hsv(np.array([[[255.0, 0, 0], [0, 255.0, 0], [0, 0, 128.0]]], dtype=np.float32))
    np.testing.assert_allclose(hsv[0], [[0, 1, 255], [120, 1, 255], [240, 1, 128]], atol=1e-4)


def test_expand_moves_boxes_with_the_image() -> None:
    img, boxes, _ = _image()
    for seed in range(20):
        out, moved = expand(np.random.default_rng(seed), img, boxes, (1.0, 2.0))
        x1, y1 = int(moved[0, 0] - boxes[0, 0]), int(moved[0, 1] - boxes[0, 1])
        assert out.shape[0] >= img.shape[0] and out.shape[1] >= img.shape[1]
        np.testing.assert_array_equal(out[y1:y1 + img.shape[0], x1:x1 + img.shape[1]], img)


def test_min_iou_crop_respects_its_mode() -> None:
    img, boxes, labels = _image()
    for seed in range(30):
        out, kept, kept_labels = min_iou_random_crop(np.random.default_rng(seed), img, boxes, labels,
                                                     (0.4, 0.5, 0.6, 0.7, 0.8, 0.9), 0.3)
        h, w = out.shape[:2]
        assert h >= 0.3 * 120 - 1 and w >= 0.3 * 200 - 1
        assert len(kept) == len(kept_labels) >= 1
        assert (kept[:, :2] >= 0).all() and (kept[:, 2] <= w).all() and (kept[:, 3] <= h).all()
    assert _iou(np.array([0, 0, 10, 10]), np.array([[0, 0, 10, 5.0]]))[0] == pytest.approx(0.5)


def test_multiscale_resize_draws_edges_in_range() -> None:
    img, boxes, _ = _image()
    for seed in range(20):
        out, scaled = random_scale_resize(np.random.default_rng(seed), img, boxes, (320, 608))
        assert max(out.shape[:2]) <= 608 and min(out.shape[:2]) <= 608
        assert max(out.shape[:2]) >= 320 * 200 / 200 * (120 / 200) - 1  # keep-ratio
        np.testing.assert_allclose(scaled[:, 2] / boxes[:, 2], out.shape[1] / 200, rtol=1e-5)


def test_pipeline_output_and_padded_batches(tmp_path: Path) -> None:
    img, boxes, labels = _image()
    chw, b, lb = mmdet_train_pipeline(np.random.default_rng(3), img, boxes, labels, PipelineParams())
    assert chw.dtype == np.float32 and chw.shape[0] == 3 and chw.shape[1] % 32 == 0 and chw.shape[2] % 32 == 0
    assert len(b) == len(lb)
    root = write_synthetic_coco(tmp_path, SyntheticSpec(train_images=6, val_images=2, seed=1))
    from functools import partial

    ds = CocoDetection(root, "train", 160, transform=partial(mmdet_train_pipeline, p=PipelineParams()))
    torch.manual_seed(0)
    batch = collate([ds[i] for i in range(4)])
    assert batch["images"].dtype == torch.float32 and batch["images"].shape[-1] % 32 == 0
    assert batch["images"].shape[-1] <= 608 + 31


def test_full_preset_scale_range_follows_mmdet_configs() -> None:
    import dataclasses

    from workloads.yolov3.config import YOLOv3Config

    full = YOLOv3Config.full()
    assert full.train_pipeline == "mmdet" and YOLOv3Config.smoke().train_pipeline == "letterbox"
    assert full.scale_range == (320, 416)  # yolov3_d53_mstrain-416
    assert dataclasses.replace(full, input_size=608).scale_range == (320, 608)  # mstrain-608
    assert dataclasses.replace(full, input_size=320).scale_range == (320, 320)  # yolov3_d53_320
