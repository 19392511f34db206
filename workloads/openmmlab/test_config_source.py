"""`harness run mmdet:CONFIG.py`: config handling without the stack (data root moved,
class set, pretrained files, loss terms, the errors), and, where mmdet is installed, an
unmodified mmdet config trained, evaluated, recorded and re-scored on COCO roots our writer
makes with other seeds and class sets."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from harness.errors import EXIT_UNAVAILABLE, SourceUnavailable, UsageError
from tests.conftest import harness_cmd
from workloads.openmmlab import mmconfig
from workloads.openmmlab.workload import config_workload, normalise_losses

MIM = "mmdet/.mim/configs/yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py"


def _cfg(root: str = "data/coco/") -> dict:
    ds = {"type": "CocoDataset", "data_root": root, "ann_file": "annotations/train.json",
          "data_prefix": {"img": "train2017/"}}
    return {"data_root": root,
            "model": {"backbone": {"init_cfg": {"type": "Pretrained",
                                                 "checkpoint": "open-mmlab://darknet53"}},
                      "bbox_head": {"num_classes": 80}},
            "train_dataloader": {"dataset": {"type": "RepeatDataset", "times": 3, "dataset": ds}},
            "val_dataloader": {"dataset": dict(ds, ann_file="annotations/val.json")},
            "val_evaluator": {"type": "CocoMetric", "ann_file": root + "annotations/val.json"}}


def test_move_data_root_rewrites_every_expanded_path(tmp_path: Path) -> None:
    cfg = _cfg()
    n = mmconfig.move_data_root(cfg, tmp_path / "coco")
    assert n == 4  # top level, train (inside the wrapper), val, and the evaluator's ann_file
    assert cfg["val_evaluator"]["ann_file"] == f"{tmp_path}/coco/annotations/val.json"
    assert cfg["train_dataloader"]["dataset"]["dataset"]["data_root"] == f"{tmp_path}/coco/"
    assert cfg["val_dataloader"]["dataset"]["ann_file"] == "annotations/val.json"  # relative


def test_a_path_that_only_shares_a_prefix_is_not_moved(tmp_path: Path) -> None:
    cfg = _cfg("data/coco")
    cfg["other"] = "data/coco2/x.json"
    mmconfig.move_data_root(cfg, tmp_path)
    assert cfg["other"] == "data/coco2/x.json"


def test_classes_from_the_annotation_file_reach_datasets_and_heads(tmp_path: Path) -> None:
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"categories": [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}]}))
    classes = mmconfig.coco_classes(ann)
    assert classes == ("a", "b")  # in id order, as COCO's loader maps them
    cfg = _cfg()
    mmconfig.set_classes(cfg, classes)
    assert cfg["model"]["bbox_head"]["num_classes"] == 2
    assert cfg["train_dataloader"]["dataset"]["dataset"]["metainfo"]["classes"] == ("a", "b")
    assert cfg["val_dataloader"]["dataset"]["metainfo"]["classes"] == ("a", "b")


def test_missing_pretrained_files_are_dropped_and_named(tmp_path: Path) -> None:
    cfg = _cfg()
    local = tmp_path / "neck.pth"
    local.write_bytes(b"x")
    cfg["model"]["neck"] = {"init_cfg": {"type": "Pretrained", "checkpoint": str(local)}}
    kept, dropped = mmconfig.drop_missing_pretrained(cfg)
    assert dropped == ["open-mmlab://darknet53"] and kept == [str(local.resolve())]
    assert cfg["model"]["backbone"]["init_cfg"] is None
    assert cfg["model"]["neck"]["init_cfg"]["checkpoint"] == str(local)


def test_losses_are_summed_as_mmengine_sums_them() -> None:
    raw = {"loss_cls": [torch.tensor([1.0, 3.0]), torch.tensor(4.0)],
           "loss_bbox": torch.tensor([2.0, 2.0]), "acc": torch.tensor(99.0)}
    out = normalise_losses(raw)
    assert set(out) == {"loss_cls", "loss_bbox"}  # 'acc' is logged by mmdet, never summed
    assert out["loss_cls"].item() == 6.0 and out["loss_bbox"].item() == 2.0
    with pytest.raises(TypeError, match="loss_x"):
        normalise_losses({"loss_x": 3})


def test_bad_sources_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such config file"):
        config_workload(f"mmdet:{tmp_path}/nope.py")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(UsageError, match="not a config file"):
        config_workload(f"mmdet:{tmp_path}/c.txt")
    with pytest.raises(UsageError, match="give a config file"):
        config_workload("mmdet:")


def test_a_missing_stack_is_exit_3_with_the_install_line(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mmdet3d" else real(name, *a))
    cfg = tmp_path / "c.py"
    cfg.write_text("model = dict()\n")
    with pytest.raises(SourceUnavailable, match="pip install --no-deps .*mmdet3d==1.4.0"):
        config_workload(f"mmdet3d:{cfg}")
    assert SourceUnavailable.exit_code == EXIT_UNAVAILABLE


# -- with the stack installed: an unmodified mmdet config through the harness --
def _mmdet_config() -> Path:
    mmdet = pytest.importorskip("mmdet")
    return Path(mmdet.__file__).parent.parent / MIM


def _coco_root(tmp_path: Path, classes: int, seed: int) -> Path:
    from workloads.datasets.coco import SyntheticSpec, write_synthetic_coco

    spec = SyntheticSpec(num_classes=classes, train_images=12, val_images=6, seed=seed,
                         min_side=480, max_side=640, category_ids=tuple(range(11, 11 + 5 * classes, 5)))
    return write_synthetic_coco(tmp_path / "data", spec)


def test_an_mmdet_config_trains_evaluates_and_its_predictions_rescore(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also: a backend plugin's native kernel (for nms, on cpu) is the one the run used."""
    config = _mmdet_config()
    monkeypatch.setenv("HARNESS_PLUGINS", "workloads.openmmlab.fake_kernel_plugin")
    root = _coco_root(tmp_path, classes=3, seed=5)
    out = tmp_path / "run"
    # Thresholds at 0 so an untrained head still writes detections to re-score.
    proc = subprocess.run(
        harness_cmd("run", f"mmdet:{config}", "--data", str(root), "--steps", "2", "--out",
                    str(out), "--set", "model.test_cfg.score_thr=0.0",
                    "--set", "model.test_cfg.conf_thr=0.0", "--set", "model.test_cfg.max_per_img=20"),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["workload"] == f"mmdet:{config}"
    source = record["workload_source"]
    assert source["classes"] == ["circle_0", "square_1", "triangle_2"]
    assert source["pretrained_dropped"] == ["open-mmlab://mmdet/mobilenet_v2"]
    assert source["cfg_options"][0] == "model.test_cfg.score_thr=0.0"
    assert source["ops"] == {"nms": "cpu:workloads.openmmlab.fake_kernel_plugin"}
    assert set(record["losses"][-1]) >= {"loss_cls", "loss_conf", "loss_xy", "loss_wh"}
    # The record's metric is pycocotools' COCOeval of the predictions file it names.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    pred = record["predictions"]
    dets = json.loads((out / pred["path"]).read_text())
    assert dets and {d["category_id"] for d in dets} <= {11, 16, 21}
    gt = COCO(pred["ground_truth"])
    ev = COCOeval(gt, gt.loadRes(str(out / pred["path"])), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert record["metrics"]["coco/bbox_mAP"] == pytest.approx(round(ev.stats[0], 3), abs=1e-9)
    assert record["primary_metric"] == "coco/bbox_mAP"


def test_evaluate_and_the_predictions_file_agree_on_nonzero_ap(tmp_path: Path) -> None:
    """Not 0 against 0: predictions made from the val ground truth (jittered, some dropped,
    one false positive per image) score well above 0, and pycocotools' COCOeval of the
    written file gives the evaluator's AP."""
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    config = _mmdet_config()
    root = _coco_root(tmp_path, classes=3, seed=9)
    from harness.config import RunConfig
    from harness.prepare import resolve_workload

    wl = resolve_workload(RunConfig(workload=f"mmdet:{config}"))
    data = wl.datasets(root, tmp_path / "cache")
    gt = COCO(str(root / "annotations" / "instances_val2017.json"))
    label_of = {cid: i for i, cid in enumerate(data.val.cat_ids)}
    rng = np.random.default_rng(0)
    preds = []
    for img_id in gt.getImgIds():
        info = gt.imgs[img_id]
        boxes, scores, labels = [], [], []
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=img_id)):
            if rng.uniform() < 0.2:
                continue  # a miss
            x, y, w, h = ann["bbox"]
            j = rng.normal(0, 2, 4)
            boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
            scores.append(rng.uniform(0.3, 1.0))
            labels.append(label_of[ann["category_id"]])
        boxes.append([0, 0, 20, 20]), scores.append(0.9), labels.append(0)  # a false positive
        preds.append({"img_id": img_id, "ori_shape": (info["height"], info["width"]),
                      "pred_instances": {"bboxes": torch.tensor(boxes, dtype=torch.float32),
                                         "scores": torch.tensor(scores, dtype=torch.float32),
                                         "labels": torch.tensor(labels)}})
    metrics = wl.evaluate(preds)
    out = tmp_path / "pred"
    out.mkdir()
    written = wl.write_predictions(preds, out)
    ev = COCOeval(gt, gt.loadRes(written["path"]), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert 0.3 < metrics["coco/bbox_mAP"] < 0.99
    assert metrics["coco/bbox_mAP"] == pytest.approx(round(ev.stats[0], 3), abs=1e-9)
    assert metrics["coco/bbox_mAP_50"] == pytest.approx(round(ev.stats[1], 3), abs=1e-9)
