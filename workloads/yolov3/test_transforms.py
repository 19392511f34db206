"""mmdet's YOLOv3 pipelines (full preset): the training pipeline's geometry and colour
space; the test pipeline's keep-ratio resize, pad to 32 and the way back to original pixels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workloads.datasets.coco import CocoDetection, SyntheticSpec, collate, write_synthetic_coco
from workloads.yolov3.model import YOLOv3, grid_priors
from workloads.yolov3.postprocess import InferConfig, _select, postprocess
from workloads.yolov3.transforms import (
    KeepRatioCocoDetection,
    PipelineParams,
    _iou,
    expand,
    hsv_to_rgb,
    keep_ratio_resize,
    keep_ratio_size,
    min_iou_random_crop,
    mmdet_train_pipeline,
    pad_to_divisor,
    random_scale_resize,
    resize_bilinear,
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


# ------------------------------------------------------------------ test pipeline (full preset)
def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _coco_root(tmp_path: Path, images: list[tuple[int, int, list[float]]]) -> Path:
    """A COCO-layout root whose val split holds noise PNGs of the given (w, h), one box each
    (xywh); train is a copy (the reader needs both splits only for the workload)."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir()
        imgs, anns = [], []
        for i, (w, h, box) in enumerate(images):
            name = f"{i:04d}.png"
            Image.fromarray(_noise(h, w, i)).save(root / f"{split}2017" / name)
            imgs.append({"id": i + 1, "file_name": name, "width": w, "height": h})
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": 3, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(
            {"images": imgs, "annotations": anns,
             "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}))
    return root


def test_keep_ratio_resize_of_640x427_at_608_is_mmdets_size() -> None:
    # mmcv rescale_size (keep_ratio): factor = min(608 / long side, 608 / short side)
    # = min(608 / 640, 608 / 427) = 0.95; _scale_size: int(side * factor + 0.5).
    factor = min(608 / 640, 608 / 427)
    assert factor == 0.95
    want = (int(640 * factor + 0.5), int(427 * factor + 0.5))  # 608.5 -> 608, 406.15 -> 406
    assert want == (608, 406)
    assert keep_ratio_size(640, 427, 608) == want
    assert keep_ratio_size(427, 640, 608) == (406, 608)  # portrait: the same rule
    assert keep_ratio_size(640, 427, 416) == (416, 278)  # 0.65: 277.55 + 0.5 -> 278
    assert keep_ratio_size(640, 427, 320) == (320, 214)  # 0.5: 213.5 + 0.5 -> 214
    assert keep_ratio_size(300, 200, 608) == (608, 405)  # small images are enlarged
    image, (sx, sy) = keep_ratio_resize(_noise(427, 640), 608)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 416, 608)  # 406 -> 416
    assert (sx, sy) == (608 / 640, 406 / 427)  # mmcv's scale_factor (new_w / w, new_h / h)


def test_resize_is_cv2_bilinear_and_the_pad_is_zero_at_bottom_right() -> None:
    img = _noise(427, 640)
    cv2 = pytest.importorskip("cv2")
    for size in ((608, 406), (416, 278), (900, 600), (640, 427)):
        ours = resize_bilinear(img, size).astype(int)
        theirs = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR).astype(int)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1  # fixed point
    flat = np.full((427, 640, 3), 200, dtype=np.uint8)
    image, _ = keep_ratio_resize(flat, 608)
    assert (image[:, :406, :608] == 200).all() and (image[:, 406:] == 0).all()
    padded = pad_to_divisor(torch.ones(3, 33, 64), 32)
    assert tuple(padded.shape) == (3, 64, 64) and padded[:, :33].eq(1).all() and padded[:, 33:].eq(0).all()
    assert tuple(pad_to_divisor(torch.ones(3, 64, 96), 32).shape) == (3, 64, 96)  # already whole


def test_boxes_round_trip_to_original_pixels(tmp_path: Path) -> None:
    boxes = [[10.25, 20.5, 290.75, 380.0], [0.0, 0.0, 300.0, 500.0]]  # xywh; the 2nd fills its image
    root = _coco_root(tmp_path, [(640, 427, boxes[0]), (300, 500, boxes[1])])
    ds = KeepRatioCocoDetection(root, "val", 608)
    for i, (x, y, w, h) in enumerate(boxes):
        item = ds[i]
        sx, sy = item["meta"]["scale"]
        iw, ih = item["meta"]["orig_size"]
        nw, nh = keep_ratio_size(iw, ih, 608)
        assert (sx, sy) == (nw / iw, nh / ih)
        assert item["image"].shape[1] % 32 == 0 and item["image"].shape[2] % 32 == 0
        # The GT in input pixels, as a confident detection, back through the postprocess.
        det = _select(item["boxes"], torch.ones(1), torch.tensor([[0.0, 1.0]]), item["meta"], InferConfig())
        np.testing.assert_allclose(det["bboxes"], [[x, y, x + w, y + h]], rtol=0, atol=1e-4)
        assert det["labels"].tolist() == [1] and det["image_id"] == i + 1


def test_a_non_square_batch_runs_through_the_model_and_postprocess(tmp_path: Path) -> None:
    # At 320: 640x427 -> 320x214 (factor 0.5), padded 320x224; 500x300 -> 320x192 (0.64).
    root = _coco_root(tmp_path, [(640, 427, [40.0, 30.0, 200.0, 150.0]), (500, 300, [5.0, 5.0, 100.0, 60.0])])
    ds = KeepRatioCocoDetection(root, "val", 320)
    items = [ds[0], ds[1]]
    assert [tuple(it["image"].shape) for it in items] == [(3, 224, 320), (3, 192, 320)]
    batch = collate(items)
    assert tuple(batch["images"].shape) == (2, 3, 224, 320)  # the batch's largest, a multiple of 32
    assert batch["images"][1, :, 192:].eq(0).all()
    torch.manual_seed(0)
    model = YOLOv3(4, 320, width=0.25, depths=(1, 1, 1, 1, 1)).eval()
    with torch.no_grad():
        maps = model(batch["images"].float() / 255)
    assert [tuple(m.shape) for m in maps] == [(2, 27, 7, 10), (2, 27, 14, 20), (2, 27, 28, 40)]
    priors = grid_priors(model, maps)
    for pr, m, s in zip(priors, maps, model.strides):
        h, w = m.shape[-2:]
        assert pr.shape == (h * w * 3, 4)
        centre = (pr[-1, :2] + pr[-1, 2:]) / 2  # the last prior: bottom-right cell
        assert centre.tolist() == [(w - 0.5) * s, (h - 0.5) * s]
    dets = postprocess(model, maps, batch["meta"], InferConfig(conf_thr=0.0, score_thr=0.0))
    for det, meta in zip(dets, batch["meta"]):
        w, h = meta["orig_size"]
        assert det["image_id"] == meta["image_id"] and len(det["bboxes"]) > 0
        assert np.isfinite(det["bboxes"]).all()
        assert (det["bboxes"][:, 0::2] <= w).all() and (det["bboxes"][:, 1::2] <= h).all()
    # One planted detection in image 1 at stride 16, cell (x=17, y=9) of the 20x14 map:
    # its box is the anchor at the cell centre, in input pixels, over image 1's scale.
    planted = [torch.full_like(m, -20.0) for m in maps]
    cell = planted[1][1, 9:18, 9, 17]  # anchor 1 of 3, (5 + 4) numbers each
    cell[:4] = 0.0
    cell[4] = 10.0
    cell[5 + 2] = 10.0
    det = postprocess(model, planted, batch["meta"], InferConfig())[1]
    aw, ah = model.anchors[1][1]
    cx, cy = 17.5 * 16, 9.5 * 16
    sx, sy = batch["meta"][1]["scale"]
    assert (sx, sy) == (320 / 500, 192 / 300)
    want = np.array([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2]) / [sx, sy, sx, sy]
    want = np.clip(want, 0, [500, 300, 500, 300])
    assert det["labels"].tolist() == [2]
    np.testing.assert_allclose(det["bboxes"][0], want, rtol=1e-5)


def test_full_evaluates_keep_ratio_and_smoke_keeps_its_letterbox(tmp_path: Path) -> None:
    import dataclasses

    from workloads.yolov3 import YOLOv3Workload
    from workloads.yolov3.config import YOLOv3Config

    assert YOLOv3Config.full().test_resize == "keep_ratio"
    assert YOLOv3Config.smoke().test_resize == "letterbox"
    root = _coco_root(tmp_path, [(640, 427, [40.0, 30.0, 200.0, 150.0])])
    full = YOLOv3Workload(dataclasses.replace(YOLOv3Config.full(), input_size=608))
    val = full.datasets(root, tmp_path / "c").val
    assert isinstance(val, KeepRatioCocoDetection) and tuple(val[0]["image"].shape) == (3, 416, 608)
    smoke = YOLOv3Workload(YOLOv3Config.smoke())
    val = smoke.datasets(root, tmp_path / "c").val
    assert type(val) is CocoDetection and tuple(val[0]["image"].shape) == (3, 160, 160)


@pytest.mark.original
def test_test_pipeline_equals_mmdets_resize_and_data_preprocessor() -> None:
    """mmdet 3.3.0's own test Resize and DetDataPreprocessor, built from the yolov3 config."""
    pytest.importorskip("mmdet", reason="mmdet is not importable (PYTHONPATH=<its dir>)")
    from workloads.yolov3.make_mmdet_manifest import CONFIG, install_op_placeholders

    install_op_placeholders()
    import mmdet
    from mmdet.registry import MODELS, TRANSFORMS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(str(Path(mmdet.__file__).parent / ".mim" / "configs" / CONFIG))
    resize_cfg = cfg.test_pipeline[1]
    assert resize_cfg == {"type": "Resize", "scale": (608, 608), "keep_ratio": True}
    resize, preprocess = TRANSFORMS.build(resize_cfg), MODELS.build(cfg.data_preprocessor)
    rgb = [_noise(427, 640, 1), _noise(500, 300, 2), _noise(200, 260, 3)]
    theirs_in, ours = [], []
    for img in rgb:
        out = resize({"img": img[..., ::-1].copy(), "img_shape": img.shape[:2]})  # mmdet loads BGR
        image, scale = keep_ratio_resize(img, 608)
        nh, nw = out["img_shape"]
        assert scale == out["scale_factor"] and (image.shape[1] - nh) < 32 and (image.shape[2] - nw) < 32
        theirs_in.append(torch.from_numpy(out["img"]).permute(2, 0, 1).contiguous())
        ours.append(image)
    theirs = preprocess({"inputs": theirs_in, "data_samples": None})["inputs"]
    batch = collate([{"image": im, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "meta": {}}
                     for im in ours])["images"]
    assert batch.shape == theirs.shape
    assert (batch.float() - theirs * 255).abs().max() <= 1 + 1e-3  # cv2's fixed-point rounding
