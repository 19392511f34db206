"""YOLOv3 on COCO roots it has never seen: classes come from the annotation file."""
from __future__ import annotations

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
    record = harness_run("yolov3", data=root, steps=20, warmup_steps=2, checkpoint=False)
    assert record["status"] == "ok", record.get("error")
    assert {"AP", "AP50"} <= set(record["metrics"])
    assert record["data_source"] == str(root)
