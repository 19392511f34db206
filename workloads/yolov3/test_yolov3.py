"""YOLOv3 workload: metric known answers, NMS, loss/assignment, decoding, smoke training."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest
import torch

from harness.pytest_plugin import assert_passes_reference_rows
from workloads.layers import nms as nms_module
from workloads.layers.nms import batched_nms, box_iou, nms
from workloads.yolov3 import YOLOv3Workload
from workloads.yolov3.config import YOLOv3Config
from workloads.yolov3.loss import assign, yolov3_loss
from workloads.yolov3.model import YOLOv3, scaled_anchors
from workloads.yolov3.postprocess import InferConfig, postprocess

pytest.importorskip("pycocotools")  # the workload's extra; the metric tests need it
from workloads.yolov3.metric import coco_bbox_metrics, to_coco_results  # noqa: E402


# ------------------------------------------------------------------ metric (pycocotools)
def _gt() -> dict[str, Any]:
    boxes = {1: [[10, 10, 40, 30, 7], [60, 50, 30, 30, 3]], 2: [[20, 20, 50, 50, 3]]}
    anns = [{"id": i + 1, "image_id": img, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (img, (*b, c)) in enumerate((img, box) for img, bs in boxes.items() for box in bs)]
    return {"images": [{"id": 1, "width": 120, "height": 100}, {"id": 2, "width": 120, "height": 100}],
            "annotations": anns, "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}


def _dets(shift: float = 0.0, drop: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    gt = _gt()
    out = []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"] and a["id"] not in drop]
        boxes = np.array([[x + shift, y, x + w + shift, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        out.append({"image_id": image["id"], "bboxes": boxes.reshape(-1, 4), "scores": np.full(len(anns), 0.9),
                    "labels": np.array([[3, 7].index(a["category_id"]) for a in anns], dtype=np.int64)})
    return out


def test_metric_perfect_predictions_score_one() -> None:
    metrics = coco_bbox_metrics(_gt(), to_coco_results(_dets(), [3, 7]))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)


def test_metric_non_overlapping_predictions_score_zero() -> None:
    metrics = coco_bbox_metrics(_gt(), to_coco_results(_dets(shift=500.0), [3, 7]))
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0


def test_metric_half_recall_known_answer() -> None:
    # Category 3 has 2 GT boxes, one found exactly: precision 1 up to recall 0.5, i.e. 51 of
    # COCO's 101 recall points; category 7 is found exactly (AP 1). Mean: (51/101 + 1) / 2.
    metrics = coco_bbox_metrics(_gt(), to_coco_results(_dets(drop=(3,)), [3, 7]))
    assert metrics["AP50"] == pytest.approx((51 / 101 + 1) / 2)
    assert metrics["AP"] == pytest.approx((51 / 101 + 1) / 2)


def test_metric_no_detections_is_zero_not_an_error() -> None:
    assert coco_bbox_metrics(_gt(), [])["AP50"] == 0.0


# ------------------------------------------------------------------ NMS
def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if all(box_iou(boxes[i:i + 1], boxes[j:j + 1]).item() <= thr for j in kept):
            kept.append(i)
    return kept


def _random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 100
    return torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=gen) * 40], dim=1)


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_reference_loop(thr: float) -> None:
    gen = torch.Generator().manual_seed(int(thr * 10))
    boxes, scores = _random_boxes(200, gen), torch.rand(200, generator=gen)
    assert nms(boxes, scores, thr).tolist() == _reference_nms(boxes, scores, thr)


def test_nms_rowwise_path_and_max_keep(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(7)
    boxes, scores = _random_boxes(300, gen), torch.rand(300, generator=gen)
    full = nms(boxes, scores, 0.5)
    assert nms(boxes, scores, 0.5, max_keep=10).tolist() == full[:10].tolist()
    monkeypatch.setattr(nms_module, "MATRIX_MAX", 16)  # force the O(N)-memory path
    assert nms(boxes, scores, 0.5).tolist() == full.tolist()
    assert nms(boxes, scores, 0.5, max_keep=10).tolist() == full[:10].tolist()


def test_batched_nms_equals_per_class_nms() -> None:
    gen = torch.Generator().manual_seed(1)
    boxes, scores = _random_boxes(150, gen), torch.rand(150, generator=gen)
    labels = torch.randint(0, 4, (150,), generator=gen)
    expected = []
    for c in range(4):
        idx = torch.nonzero(labels == c).flatten()
        expected += idx[torch.as_tensor(_reference_nms(boxes[idx], scores[idx], 0.45), dtype=torch.long)].tolist()
    got = batched_nms(boxes, scores, labels, 0.45).tolist()
    assert sorted(got) == sorted(expected)
    assert scores[got].tolist() == sorted(scores[got].tolist(), reverse=True)
    assert nms(boxes[:0], scores[:0], 0.5).numel() == 0


# ------------------------------------------------------------------ loss and assignment
def _tiny_model(num_classes: int = 3) -> YOLOv3:
    torch.manual_seed(0)
    return YOLOv3(num_classes, input_size=128, width=0.125, depths=(1, 1, 1, 1, 1), scale_anchors=True)


def test_model_output_shapes() -> None:
    maps = _tiny_model()(torch.rand(2, 3, 128, 128))
    assert [tuple(m.shape) for m in maps] == [(2, 24, 4, 4), (2, 24, 8, 8), (2, 24, 16, 16)]


def test_assignment_puts_gt_at_expected_cell_and_anchor() -> None:
    model = _tiny_model()
    maps = model(torch.rand(2, 3, 128, 128))
    # A box shaped exactly like anchor 1 of the stride-16 level, on the centre of cell (3, 4):
    # IoU 1 with that prior, below 0.5 with every other responsible prior.
    aw, ah = scaled_anchors(128, True)[1][1]
    cx, cy = 3.5 * 16, 4.5 * 16
    box = torch.tensor([[cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2]])
    asg = assign(model, maps, [box, torch.zeros(0, 4)], [torch.tensor([2]), torch.zeros(0, dtype=torch.long)])
    assert asg.batch_idx.tolist() == [0] and asg.level.tolist() == [1] and asg.anchor.tolist() == [1]
    assert asg.cell.tolist() == [[3, 4]]
    assert asg.prior_idx.tolist() == [4 * 4 * 3 + (4 * 8 + 3) * 3 + 1]
    assert asg.target_xy[0].tolist() == pytest.approx([0.5, 0.5])
    assert asg.target_wh[0].tolist() == pytest.approx([0.0, 0.0], abs=1e-5)
    assert asg.labels.tolist() == [2]
    assert not asg.neg[0, asg.prior_idx[0]]  # the positive is not also a negative
    assert asg.neg[1].all()  # an image without boxes: every prior is a negative
    assert (~asg.neg[0]).sum() >= 1


def test_grid_assigner_hand_worked_multi_positive_case() -> None:
    """mmdet's GridAssigner, worked by hand. Input 128: grids 4x4 (stride 32), 8x8 (16),
    16x16 (8); anchors (32, 64, 100), (16, 20, 40), (8, 12, 24) px squares.

    GT A = [31, 31, 49, 49] (18 px, centre (40, 40)): responsible cells (1, 1)/(2, 2)/(5, 5).
    Stride-16 cell (2, 2) is centred on (40, 40): IoU 256/324 = 0.790 with the 16-px prior
    and 324/400 = 0.810 with the 20-px one -> BOTH positive (> 0.5); 40 px: 0.2025. Stride
    32 cell (1, 1) at (48, 48): 289/1059 = 0.273 (32 px); stride 8 cell (5, 5) at (44, 44):
    0.198, 0.349, 0.473. Two positives, priors 48 + (2*8+2)*3 + {0, 1} = 102, 103.
    GT B = [97, 5, 103, 35] (6x30, centre (100, 20)): no responsible prior reaches 0.5;
    the best is stride 8 cell (12, 2) at (100, 20), 12-px anchor: 72/252 = 0.2857 (just
    above stride 16 cell (6, 1) with 16 px: 96/340 = 0.2824) -> the only positive of B,
    prior 240 + (2*16+12)*3 + 1 = 373. Mmdet's old shape-only rule (one anchor per GT)
    would give A a single positive."""
    model = _tiny_model()
    model.anchors = (((32, 32), (64, 64), (100, 100)), ((16, 16), (20, 20), (40, 40)),
                     ((8, 8), (12, 12), (24, 24)))
    maps = [torch.zeros(1, 3 * 8, s, s) for s in (4, 8, 16)]
    boxes = torch.tensor([[31.0, 31.0, 49.0, 49.0], [97.0, 5.0, 103.0, 35.0]])
    asg = assign(model, maps, [boxes], [torch.tensor([0, 2])])
    order = asg.prior_idx.argsort()
    assert asg.prior_idx[order].tolist() == [102, 103, 373]
    assert asg.labels[order].tolist() == [0, 0, 2]
    assert asg.level[order].tolist() == [1, 1, 2] and asg.anchor[order].tolist() == [0, 1, 1]
    assert asg.cell[order].tolist() == [[2, 2], [2, 2], [12, 2]]
    np.testing.assert_allclose(asg.target_xy[order].numpy(), [[0.5, 0.5]] * 3, atol=1e-6)
    expected_wh = [[math.log(18 / 16)] * 2, [math.log(18 / 20)] * 2, [math.log(6 / 12), math.log(30 / 12)]]
    np.testing.assert_allclose(asg.target_wh[order].numpy(), expected_wh, atol=1e-6)
    # Negatives: IoU <= 0.5 with both GT. Priors with IoU > 0.5 are never negatives.
    assert not asg.neg[0, [102, 103, 373]].any()
    assert int((~asg.neg[0]).sum()) == 3


def test_loss_terms_named_finite_and_differentiable() -> None:
    model = _tiny_model()
    maps = model(torch.rand(2, 3, 128, 128))
    boxes = [torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 70.0, 120.0, 126.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.long)]
    terms = yolov3_loss(model, maps, boxes, labels)
    assert set(terms) == {"loss_cls", "loss_conf", "loss_xy", "loss_wh"}
    assert all(t.ndim == 0 and math.isfinite(t.item()) and t.item() > 0 for t in terms.values())
    sum(terms.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_postprocess_decodes_one_box_back_to_original_pixels() -> None:
    model = _tiny_model(num_classes=2)
    maps = [torch.full((1, 3 * 7, s, s), -20.0) for s in (4, 8, 16)]
    # Stride-16 level, cell (x=3, y=4), anchor 1: objectness and class 1 on, box = anchor.
    cell = maps[1][0, 7:14, 4, 3]
    cell[:4] = 0.0
    cell[4] = 10.0
    cell[6] = 10.0
    meta = [{"image_id": 5, "orig_size": (256, 200), "scale": (0.5, 0.5)}]
    det = postprocess(model, maps, meta, InferConfig())[0]
    aw, ah = model.anchors[1][1]
    cx, cy = 3.5 * 16, 4.5 * 16  # sigmoid(0) = 0.5: the cell centre
    expected = np.array([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2]) / 0.5
    assert det["image_id"] == 5 and det["labels"].tolist() == [1]
    np.testing.assert_allclose(det["bboxes"][0], expected, rtol=1e-5)


def test_scheduler_follows_the_mmdet_step_schedule() -> None:
    wl = YOLOv3Workload(YOLOv3Config.full())
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = wl.build_scheduler(opt, total_steps=273_000)
    fn = sched.lr_lambdas[0]
    assert fn(0) == pytest.approx(0.1) and fn(1000) == pytest.approx(0.55) and fn(2000) == 1.0
    assert fn(217_999) == 1.0 and fn(218_000) == pytest.approx(0.1) and fn(246_000) == pytest.approx(0.01)


# ------------------------------------------------------------------ training, both ends
def _untrained_ap50(cache_dir: Any) -> float:
    """The smoke model as the run builds it (seed 0), evaluated without training."""
    wl = YOLOv3Workload(YOLOv3Workload.presets()["smoke"])
    data = wl.datasets(None, cache_dir)
    torch.manual_seed(0)
    model = wl.build_model().eval()
    preds: list[Any] = []
    loader = torch.utils.data.DataLoader(data.val, batch_size=wl.config.eval_batch_size, collate_fn=data.collate)
    with torch.no_grad():
        for batch in loader:
            preds += wl.predict(model, batch)
    return wl.evaluate(preds)["AP50"]


def test_smoke_training_reaches_reference(harness_run: Callable[..., dict[str, Any]], harness_cache: Any) -> None:
    assert _untrained_ap50(harness_cache) < 0.05
    record = harness_run("yolov3", seed=0, checkpoint=False)
    assert record["status"] == "ok"
    # The gate is `harness check` against the smoke rows of reference_results/yolov3.csv (one
    # source of numbers: seeds and CPU kernel paths in their `source` and in
    # reference_results/README.md).
    assert_passes_reference_rows(record, "yolov3")


def test_backbone_weights_load_from_a_local_file(tmp_path: Any) -> None:
    import dataclasses

    source = YOLOv3Workload(YOLOv3Config.smoke()).build_model().backbone
    for p in source.parameters():
        p.data.normal_()
    torch.save(source.state_dict(), tmp_path / "darknet.pth")
    from harness.start_weights import load_start_weights

    cfg = dataclasses.replace(YOLOv3Config.smoke(), backbone_weights=str(tmp_path / "darknet.pth"))
    workload = YOLOv3Workload(cfg)
    model = workload.build_model()
    (entry,) = load_start_weights(workload, model)  # what the host does after build_model()
    assert entry["layout"] == "harness"
    loaded = model.backbone
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))


def test_backbone_statistics_frozen_over_loaded_weights_only(tmp_path: Any) -> None:
    import dataclasses

    from torch import nn

    plain = YOLOv3Workload(YOLOv3Config.smoke()).build_model().train()
    assert all(m.training for m in plain.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    torch.save(plain.backbone.state_dict(), tmp_path / "d.pth")
    cfg = dataclasses.replace(YOLOv3Config.smoke(), backbone_weights=str(tmp_path / "d.pth"))
    pretrained = YOLOv3Workload(cfg).build_model().train()
    bns = [m for m in pretrained.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(m.training for m in pretrained.neck.modules() if isinstance(m, nn.BatchNorm2d))
