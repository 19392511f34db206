"""`harness run mmdet3d:CONFIG.py` on nuScenes: mmdet3d's info pickles from a nuScenes root,
NuScenesMetric off CUDA (host boxes, empty submissions), and, where mmdet3d imports
(PYTHONPATH with mmdet3d 1.4 and its extra deps: docs/openmmlab.md), FCOS3D's unmodified
config trained, evaluated, recorded and re-scored by the devkit on a synthetic root."""
from __future__ import annotations

import json
import math
import pickle
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import harness_cmd

FCOS3D = "mmdet3d/.mim/configs/fcos3d/fcos3d_r101-caffe-dcn_fpn_head-gn_8xb2-1x_nus-mono3d.py"
NUS = "NuScenes metric/pred_instances_3d_NuScenes/"


def test_an_empty_submission_scores_as_the_devkit_defines_no_detections() -> None:
    pytest.importorskip("nuscenes")
    from nuscenes.eval.common.config import config_factory

    from workloads.openmmlab.mmdet3d_metric import no_detection_summary

    summary = no_detection_summary(config_factory("detection_cvpr_2019"))
    assert summary["mean_ap"] == 0.0 and summary["nd_score"] == 0.0
    assert all(v == 1.0 for v in summary["tp_errors"].values())
    assert math.isnan(summary["label_tp_errors"]["traffic_cone"]["orient_err"])
    assert summary["label_tp_errors"]["car"]["vel_err"] == 1.0
    assert summary["label_aps"]["car"]["2.0"] == 0.0


def _mmdet3d() -> Any:
    pytest.importorskip("mmdet3d")
    from workloads.openmmlab.stack import activate

    activate("mmdet3d")
    import mmdet3d

    return mmdet3d


def test_host_boxes_equal_mmdet3ds_own_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    _mmdet3d()
    from mmdet3d.evaluation.metrics import nuscenes_metric
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    from workloads.openmmlab.mmdet3d_metric import boxes_to_cam_box3d

    torch.manual_seed(0)
    boxes = [Box(torch.randn(3).tolist(), (torch.rand(3) + 0.5).tolist(),
                 Quaternion(axis=(0, 1, 0), angle=float(a)), label=int(k), score=float(s),
                 velocity=tuple(torch.randn(3).tolist()))
             for a, k, s in zip(torch.rand(5) * 6, torch.randint(0, 10, (5,)), torch.rand(5))]
    ours = boxes_to_cam_box3d(boxes)
    # mmdet3d's own function, with its .cuda() calls made no-ops for the comparison
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    theirs = nuscenes_metric.nusc_box_to_cam_box3d(boxes)
    torch.testing.assert_close(ours[0].tensor, theirs[0].tensor)
    torch.testing.assert_close(ours[1], theirs[1])
    assert torch.equal(ours[2], theirs[2])
    empty = boxes_to_cam_box3d([])
    assert empty[0].tensor.shape == (0, 9) and empty[1].shape == (0, 11)


def _root(tmp_path: Path) -> Path:
    from workloads.datasets.nuscenes_synth import write_synthetic_nuscenes

    # scene-0061 (mini_train) and scene-0103 (mini_val), two key samples each
    return write_synthetic_nuscenes(tmp_path / "nus", num_scenes=2, samples_per_scene=2,
                                    image_size=(1600, 900), objects_per_scene=24, seed=3)


def test_infos_of_a_read_only_root_go_to_the_cache(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _mmdet3d()
    from workloads.datasets import derived
    from workloads.openmmlab import mmdet3d_infos

    root = _root(tmp_path)
    # a read-only mount (chmod does not stop root, which CI may run as)
    monkeypatch.setattr(derived, "root_is_writable", lambda path: False)
    version, paths = mmdet3d_infos.info_paths(root, tmp_path / "cache")
    assert not list(root.glob("*.pkl"))
    assert version == "v1.0-mini"
    assert paths["val"].parent.parent.parent == tmp_path / "cache"
    with open(paths["val"], "rb") as f:
        infos = pickle.load(f)
    assert infos["metainfo"]["version"] == "v1.0-mini"
    assert len(infos["data_list"]) == 2  # scene-0103's two key samples
    info = infos["data_list"][0]
    # the camera order NuScenesDataset numbers and NuScenesMetric decodes
    assert list(info["images"]) == list(mmdet3d_infos.CAMERAS)
    front = info["images"]["CAM_FRONT"]
    assert front["img_path"].endswith(".jpg") and "/" not in front["img_path"]
    assert (root / "samples" / "CAM_FRONT" / front["img_path"]).is_file()
    assert len(front["cam2img"]) == 3 and len(front["lidar2cam"]) == 4
    instances = [i for cam in info["cam_instances"].values() for i in cam]
    assert instances and {"bbox", "bbox_3d", "velocity", "center_2d", "depth", "attr_label",
                          "bbox_label_3d", "bbox_3d_isvalid"} <= set(instances[0])


@pytest.mark.slow
def test_fcos3d_config_trains_evaluates_and_its_predictions_rescore(tmp_path: Path) -> None:
    mmdet3d = _mmdet3d()
    config = Path(mmdet3d.__file__).parent.parent / FCOS3D
    root = _root(tmp_path)
    out = tmp_path / "run"
    # Smaller images and ResNet-50 (still DCNv2 in stages 3-4) keep the run short on a CPU;
    # the code path is the one --data takes at 1600x900. Thresholds low so that an untrained
    # head writes boxes to re-score, and
    # few candidates per level (the portable rotated NMS runs on the host).
    options = ["train_dataloader.dataset.pipeline.2.scale=(480,270)",
               "val_dataloader.dataset.pipeline.1.scale_factor=0.3",
               "model.backbone.depth=50", "model.test_cfg.score_thr=0.0",
               "model.test_cfg.nms_pre=50",
               "model.test_cfg.max_per_img=20"]
    args = ["run", f"mmdet3d:{config}", "--backend", "cpu", "--data", str(root), "--steps",
            "2", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    for option in options:
        args += ["--set", option]
    proc = subprocess.run(harness_cmd(*args), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok"
    assert record["primary_metric"] == NUS + "NDS"
    assert record["workload_source"]["ops"].get("modulated_deform_conv2d") == "portable"
    assert {"loss_cls", "loss_depth", "loss_velo", "loss_attr"} <= set(record["losses"][-1])
    pred = record["predictions"]
    assert pred["format"] == "nuscenes-detection" and pred["ground_truth"]["eval_set"] == "mini_val"
    results = json.loads((out / pred["path"]).read_text())["results"]
    assert len(results) == 2  # every val sample, as the devkit requires
    if not any(results.values()):
        assert record["metrics"][NUS + "NDS"] == 0.0 and record["metrics"][NUS + "mAP"] == 0.0
        return
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    gt = pred["ground_truth"]
    nusc = NuScenes(gt["version"], gt["dataroot"], verbose=False)
    metrics, _ = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(out / pred["path"]),
                               eval_set=gt["eval_set"], output_dir=str(tmp_path / "devkit"),
                               verbose=False).evaluate()
    assert record["metrics"][NUS + "NDS"] == pytest.approx(metrics.nd_score, abs=1e-9)
    assert record["metrics"][NUS + "mAP"] == pytest.approx(metrics.mean_ap, abs=1e-9)
