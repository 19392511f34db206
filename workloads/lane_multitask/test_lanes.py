"""lanes: metric against the official scorer's port, targets -> decoding round trip, loss, model."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tusimple_official import score_files
from workloads.datasets import tusimple
from workloads.datasets.tusimple_synth import SynthSpec, write_synthetic_tusimple
from workloads.lane_multitask import LanesWorkload
from workloads.lane_multitask.config import LanesConfig
from workloads.lane_multitask.data import collate
from workloads.lane_multitask.decode import DecodeConfig, decode_lanes
from workloads.lane_multitask.loss import focal_loss, multitask_loss
from workloads.lane_multitask.metric import DrivableIoU, bench, tusimple_scores
from workloads.lane_multitask.model import LaneMultitaskNet

H = list(range(160, 711, 10))


def _lane(x0: float, slope: float, start: int = 0) -> list[int]:
    return [int(x0 + slope * i) if i >= start else -2 for i in range(len(H))]


def test_bench_known_answers() -> None:
    gt = [_lane(300, -4), _lane(640, 0), _lane(900, 5)]
    assert bench(gt, gt, H, 10) == (1.0, 0.0, 0.0)
    assert bench([], gt, H, 10) == (0.0, 0.0, 1.0)
    assert bench(gt, gt, H, 201) == (0.0, 0.0, 1.0)  # over the 200 ms rule
    assert bench(gt + [_lane(50, 0)] * 3, gt, H, 10) == (0.0, 0.0, 1.0)  # > len(gt) + 2
    # one prediction matching two GT lanes 10 px apart: FP = 1 - 2 < 0 (the official quirk)
    acc, fp, fn = bench([_lane(640, 0)], [_lane(635, 0), _lane(645, 0)], H, 10)
    assert (acc, fp, fn) == (1.0, -1.0, 0.0)
    # five GT lanes: one miss forgiven, the worst line accuracy dropped
    five = [_lane(100 + 200 * i, 0) for i in range(5)]
    assert bench(five[:4], five, H, 10) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        bench([[1, 2]], gt, H, 10)


def test_threshold_widens_with_the_lane_angle() -> None:
    steep = _lane(100, 20)  # ~63 degrees from vertical: threshold 20 / cos = 45 px
    shifted = [x + 30 for x in steep]
    assert bench([shifted], [steep], H, 10)[0] == 1.0
    straight = _lane(640, 0)
    assert bench([[x + 30 for x in straight]], [straight], H, 10)[0] == 0.0


def test_scores_equal_the_official_port_on_random_submissions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for i in range(60):
        gt = [_lane(rng.uniform(0, 1280), rng.uniform(-20, 20), int(rng.integers(0, 20)))
              for _ in range(int(rng.integers(1, 6)))]
        pred = [[x + int(rng.normal(0, 12)) if x >= 0 else -2 for x in g] for g in gt
                if rng.random() < 0.8]
        pred += [_lane(rng.uniform(0, 1280), 0) for _ in range(int(rng.integers(0, 3)))]
        raw = f"clips/x/{i}/20.jpg"
        gts.append({"raw_file": raw, "lanes": gt, "h_samples": H})
        preds.append({"raw_file": raw, "lanes": pred, "run_time": float(rng.uniform(0, 230))})
    for name, rows in (("gt.json", gts), ("pred.json", preds)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    ours = tusimple_scores(preds, gts)
    official = score_files(tmp_path / "pred.json", tmp_path / "gt.json")
    assert ours == pytest.approx(official, abs=1e-12)
    assert 0.2 < ours["Accuracy"] < 0.95  # a non-trivial mix


def test_drivable_iou_figures() -> None:
    ious = DrivableIoU()
    gt = np.zeros((4, 4), np.uint8)
    gt[2:] = 1
    ious.add(gt, gt)  # 1.0
    ious.add(np.zeros_like(gt), gt)  # 0.0
    half = gt.copy()
    half[2:, :2] = 0
    ious.add(half, gt)  # 0.5
    r = ious.result()
    assert r["drivable_IoU_mean"] == pytest.approx(0.5) and r["drivable_IoU_median"] == 0.5
    assert (r["drivable_IoU_lt_0.4"], r["drivable_IoU_ge_0.4"]) == (1.0, 2.0)
    # summed confusion: TP 12, FN 12, FP 0, TN 24 -> drivable 12/24, background 24/36
    assert r["drivable_mIoU"] == pytest.approx((12 / 24 + 24 / 36) / 2)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_tusimple(tmp_path_factory.mktemp("lanes"), SynthSpec(train_frames=4, test_frames=6))


def _workload(root: Path, **kw: object) -> tuple[LanesWorkload, object]:
    w = LanesWorkload(dataclasses.replace(LanesConfig.smoke(), **kw))
    return w, w.datasets(root, root.parent)


def test_targets_decode_back_to_the_labels(small_root: Path) -> None:
    """GANet's targets used as perfect network outputs decode to the labelled lanes. The
    heatmap is the exact lane cells (offset_mask): off-lane cells of the blurred Gaussian
    carry no offset target, so a trained network's smooth offsets cannot be stood in for."""
    w, data = _workload(small_root, input_size=(320, 800), flip_prob=0.0)
    c = w.config
    for index, frame in enumerate(data.train.frames):
        t = data.train[index]
        lanes = decode_lanes(t["offset_mask"][0].numpy(), t["pts_offset"].numpy(),
                             t["int_offset"].numpy(), frame.h_samples.tolist(),
                             DecodeConfig(), c.input_size, c.source_size, 160)
        a, fp, fn = bench(lanes, frame.lanes.tolist(), frame.h_samples.tolist(), 0)
        assert a > 0.9 and fp <= 0.25 and fn == 0, (frame.raw_file, a, fp, fn)


def test_model_shapes_and_loss_terms(small_root: Path) -> None:
    w, data = _workload(small_root)
    model = w.build_model()
    batch = collate([data.train[i] for i in range(2)])
    out = model(batch["images"].float())
    assert out["kpts_hm"].shape == (2, 1, 20, 50) and out["pts_offset"].shape == (2, 2, 20, 50)
    assert out["drivable"].shape == (2, 1, 160, 400)  # full crop resolution
    terms = w.loss(model, batch)
    assert list(terms) == ["0_focalloss", "1_focalloss", "2_regl1kploss", "3_regl1kploss",
                           "seg_bceloss", "seg_diceloss"]
    assert terms["0_focalloss"].item() == 0.0  # GANet's center weight 0
    sum(terms.values()).backward()
    assert model.keypts_head[0].weight.grad.abs().sum() > 0
    assert model.drivable_head[0][0].weight.grad.abs().sum() > 0


def test_focal_loss_is_zero_with_two_positives_or_fewer() -> None:
    gt = torch.zeros(1, 1, 4, 4)
    gt[0, 0, 0, :2] = 1
    pred = torch.full((1, 1, 4, 4), 0.3, requires_grad=True)
    assert focal_loss(pred, gt).item() == 0.0
    gt[0, 0, 1, 0] = 1
    assert focal_loss(pred, gt).item() > 0


def test_uncertainty_weighting_form() -> None:
    cfg = dataclasses.replace(LanesConfig.smoke(), loss_weighting="uncertainty")
    model = LaneMultitaskNet(cfg)
    assert model.log_vars is not None and model.log_vars.dtype == torch.float32
    with torch.no_grad():
        model.log_vars.copy_(torch.tensor([0.5, -1.0]))
    out = {k: torch.randn(1, *s) for k, s in {"cpts_hm": (1, 20, 50), "kpts_hm": (1, 20, 50),
                                                "pts_offset": (2, 20, 50), "int_offset": (2, 20, 50),
                                                "drivable": (1, 160, 400)}.items()}
    batch = {"gt_cpts_hm": torch.zeros(1, 1, 20, 50), "gt_kpts_hm": torch.zeros(1, 1, 20, 50),
             "int_offset": torch.rand(1, 2, 20, 50), "pts_offset": torch.rand(1, 2, 20, 50),
             "offset_mask": torch.ones(1, 1, 20, 50), "offset_mask_weight": torch.ones(1, 2, 20, 50),
             "drivable": torch.ones(1, 160, 400, dtype=torch.uint8)}
    batch["gt_kpts_hm"][0, 0, 5, :4] = 1
    fixed = multitask_loss(out, batch, LanesConfig.smoke(), None)
    weighted = multitask_loss(out, batch, cfg, model.log_vars)
    for name in ("1_focalloss", "2_regl1kploss", "3_regl1kploss"):
        assert weighted[name].item() == pytest.approx(fixed[name].item() * np.exp(-0.5), rel=1e-5)
    for name in ("seg_bceloss", "seg_diceloss"):
        assert weighted[name].item() == pytest.approx(fixed[name].item() * np.exp(1.0), rel=1e-5)
    assert weighted["uncertainty_reg"].item() == pytest.approx(-0.5)
    w = LanesWorkload(cfg)
    opt = w.build_optimizer(model)
    assert [g["weight_decay"] for g in opt.param_groups][-1] == 0.0
    assert opt.param_groups[-1]["params"][0] is model.log_vars


def test_written_predictions_rescore_to_the_metrics(small_root: Path, tmp_path: Path) -> None:
    """write_predictions + the official port reproduce evaluate()'s Accuracy/FP/FN/F1."""
    w, _ = _workload(small_root)
    rng = np.random.default_rng(1)
    preds = []
    for i, frame in enumerate(tusimple.load_split(small_root, "test")):
        lanes = [[int(x + rng.normal(0, 15)) if x >= 0 else -2 for x in lane]
                 for lane in frame.lanes.tolist()[: 1 + i % 4]]
        mask = (rng.random(w.config.input_size) < 0.5).astype(np.uint8)
        preds.append({"raw_file": frame.raw_file, "lanes": lanes, "mask": mask, "index": i,
                      "run_time": 5.0 + 50 * i})
    metrics = w.evaluate(preds)
    info = w.write_predictions(preds, tmp_path)
    assert info["format"] == "tusimple" and Path(info["path"]).is_file()
    official = score_files(info["path"], info["ground_truth"])
    for name in ("Accuracy", "FP", "FN", "F1"):
        assert metrics[name] == pytest.approx(official[name], abs=1e-9), name
    assert 0 < metrics["Accuracy"] < 1
    # the mask PNGs are the evaluated masks, at the source resolution
    ious = DrivableIoU()
    for frame in tusimple.load_split(small_root, "test"):
        png = np.asarray(__import__("PIL.Image").Image.open(tusimple.mask_path(tmp_path, frame.raw_file)))
        assert png.shape == (720, 1280)
        ious.add(png > 0, tusimple.drivable_mask(small_root, frame, (1280, 720))[0])
    assert ious.result()["drivable_IoU_mean"] == pytest.approx(metrics["drivable_IoU_mean"])


def test_frame_size_comes_from_the_data_unless_set(small_root: Path) -> None:
    from harness.errors import DatasetError

    w, _ = _workload(small_root)
    assert w.config.source_size == (1280, 720) and w.config.drivable_source == "files"
    wrong = LanesWorkload(dataclasses.replace(LanesConfig.smoke(), source_size=(640, 360)),
                          frozenset({"source_size"}))
    with pytest.raises(DatasetError, match=r"20\.jpg: image is 1280x720 but --set source_size=640,360"):
        wrong.datasets(small_root, small_root.parent)
