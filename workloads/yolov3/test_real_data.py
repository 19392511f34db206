"""YOLOv3 on COCO roots it has never seen: classes come from the annotation file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.errors import DatasetError
from workloads.datasets.coco import SyntheticSpec, annotation_file, write_synthetic_coco
from workloads.yolov3 import YOLOv3Workload
from workloads.yolov3.config import YOLOv3Config

pytest.importorskip("pycocotools")


def _root(tmp_path: Path, **spec: Any) -> Path:
    return write_synthetic_coco(tmp_path, SyntheticSpec(train_images=24, val_images=6, **spec))


@pytest.mark.parametrize("spec", [
    dict(num_classes=3, category_ids=(2, 7, 11), seed=5, min_side=300, max_side=640),
    dict(num_classes=7, category_ids=(1, 2, 3, 40, 41, 88, 90), seed=9, min_side=64, max_side=128),
    dict(num_classes=1, category_ids=(17,), seed=2),
])
def test_classes_come_from_the_annotation_file(tmp_path: Path, spec: dict[str, Any]) -> None:
    root = _root(tmp_path, **spec)
    wl = YOLOv3Workload(YOLOv3Config.smoke())
    data = wl.datasets(root, tmp_path / "unused-cache")
    n = spec["num_classes"]
    assert wl.config.num_classes == n
    assert len(wl.config.class_names) == n and wl.config.class_names[0].endswith("_0")
    assert data.from_data == {"num_classes": str(annotation_file(root, "train")),
                              "class_names": str(annotation_file(root, "train"))}
    model = wl.build_model()
    assert model.head.preds[0].out_channels == 3 * (5 + n)
    assert data.val.cat_ids == list(spec["category_ids"])


def test_explicit_num_classes_that_contradicts_the_file_is_an_error(tmp_path: Path) -> None:
    root = _root(tmp_path, num_classes=3, category_ids=(2, 7, 11))
    wl = YOLOv3Workload(YOLOv3Config.smoke(), user_set=frozenset({"num_classes"}))  # smoke has 4
    with pytest.raises(DatasetError, match=r"instances_train2017\.json.*num_classes=4"):
        wl.datasets(root, tmp_path)
    agreeing = YOLOv3Workload(YOLOv3Config(num_classes=3), user_set=frozenset({"num_classes"}))
    assert agreeing.datasets(root, tmp_path).from_data == {
        "class_names": str(annotation_file(root, "train"))}


def test_runs_on_a_three_category_root_without_set(
        harness_run: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    root = _root(tmp_path / "coco", num_classes=3, category_ids=(2, 7, 11), seed=4,
                 min_side=160, max_side=480)
    out = tmp_path / "run"
    record = harness_run("yolov3", data=root, steps=20, warmup_steps=2, checkpoint=False, out=out)
    assert record["status"] == "ok", record.get("error")
    assert {"AP", "AP50"} <= set(record["metrics"])
    assert record["data_source"] == str(root)
    if "predictions" in record:  # the harness side of the predictions contract
        pred = record["predictions"]
        assert pred["format"] == "coco-results" and pred["split"] == "val"
        path = out / pred["path"]
        if json.loads(path.read_text()):  # loadRes cannot read an empty list; then all are 0
            rescored = _cocoeval_file(pred["ground_truth"], str(path))
            assert all(abs(rescored[k] - v) < 1e-6 for k, v in record["metrics"].items())
        else:
            assert not any(record["metrics"].values())


def _cocoeval_file(ann_file: str, results_file: str) -> dict[str, float]:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from workloads.yolov3.metric import STAT_NAMES

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        ev = COCOeval(gt, gt.loadRes(results_file), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats) if v >= 0}


def test_written_results_rescore_to_the_workload_metrics(tmp_path: Path) -> None:
    import numpy as np

    root = _root(tmp_path, num_classes=3, category_ids=(2, 7, 11), seed=6, min_side=200, max_side=500)
    wl = YOLOv3Workload(YOLOv3Config.smoke())
    wl.datasets(root, tmp_path)
    rng = np.random.default_rng(0)
    preds = []  # the val GT, jittered, some boxes dropped or relabelled, plus false positives
    for img in wl._val.images:
        anns = [a for a in wl._val.instances["annotations"] if a["image_id"] == img["id"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        boxes = np.concatenate([boxes + rng.normal(0, 4, boxes.shape), [[5, 5, 60, 70]]])
        labels = np.array([wl._val.cat_to_label[a["category_id"]] for a in anns] + [1])
        labels[rng.random(len(labels)) < 0.2] = 0
        keep = rng.random(len(labels)) > 0.1
        preds.append({"image_id": img["id"], "bboxes": boxes[keep], "scores": rng.uniform(0.1, 1, int(keep.sum())),
                      "labels": labels[keep]})
    ours = wl.evaluate(preds)
    info = wl.write_predictions(preds, tmp_path)
    assert info["format"] == "coco-results" and info["split"] == "val"
    assert info["ground_truth"] == str(annotation_file(root, "val").resolve())
    written = json.loads(Path(info["path"]).read_text())
    assert {r["category_id"] for r in written} <= {2, 7, 11}
    theirs = _cocoeval_file(info["ground_truth"], info["path"])
    assert 0.2 < ours["AP50"] < 0.95  # a non-trivial case
    assert set(ours) == set(theirs)
    for key in ours:
        assert abs(ours[key] - theirs[key]) < 1e-6, key
