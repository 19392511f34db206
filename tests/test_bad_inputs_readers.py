"""Every reader (issue 15 item 4): an empty split and a non-finite annotation number are a
DatasetError naming the file and the field (COCO's cases are in tests/test_bad_inputs.py)."""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.errors import DatasetError
from workloads.datasets.checks import check_finite

H = [160, 170, 180]


def _tusimple_line(lanes: Any, h: Any = None) -> str:
    return json.dumps({"raw_file": "clips/0/1.jpg", "lanes": lanes, "h_samples": h or H})


@pytest.mark.parametrize("text,field", [
    (_tusimple_line([[100, 101, 102], [300, 301, 302]]).replace("301", "NaN"), "'lanes'[1]"),
    (_tusimple_line([[100, 101, 102]]).replace("102", "Infinity"), "'lanes'[0]"),
    (_tusimple_line([[100, 101, 102]]).replace("180]", "-Infinity]"), "'h_samples'"),
], ids=["nan-in-a-lane", "inf-in-a-lane", "inf-in-h_samples"])
def test_tusimple_non_finite_number_is_a_dataset_error(text: str, field: str,
                                                       tmp_path: Path) -> None:
    from workloads.datasets.tusimple import read_label_file

    path = tmp_path / "label_data_0313.json"
    path.write_text(_tusimple_line([[1, 2, 3]]) + "\n" + text + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"field {field} has a non-finite")) as info:
        read_label_file(path)
    assert str(info.value).startswith(f"{path}:2: ")


def test_tusimple_empty_split_is_a_dataset_error(tmp_path: Path) -> None:
    from workloads.datasets.tusimple import read_label_file

    path = tmp_path / "test_label.json"
    path.write_text("\n")
    with pytest.raises(DatasetError, match="no labelled frames") as info:
        read_label_file(path)
    assert str(path) in str(info.value)


def _nuscenes_info(size: list[float]) -> dict[str, Any]:
    return {"sample_token": "tok", "ann_infos": [
        {"translation": [1.0, 2.0, 0.5], "size": [1.8, 4.5, 1.6], "rotation": [1.0, 0, 0, 0],
         "velocity": [float("nan")] * 3},  # unknown velocity: the devkit's NaN, allowed
        {"translation": [3.0, 2.0, 0.5], "size": size, "rotation": [1.0, 0, 0, 0],
         "velocity": [0.0] * 3}]}


def test_nuscenes_non_finite_box_is_a_dataset_error(tmp_path: Path) -> None:
    from workloads.datasets.nuscenes_dataset import load_infos

    path = tmp_path / "nuscenes_infos_train.pkl"
    path.write_bytes(pickle.dumps([_nuscenes_info([1.8, 4.5, 1.6]),
                                   _nuscenes_info([1.8, float("inf"), 1.6])]))
    with pytest.raises(DatasetError) as info:
        load_infos(path)
    assert str(info.value) == (f"{path}: info 1 (sample tok) field 'ann_infos[1].size' has a "
                               f"non-finite value ([1.8, inf, 1.6])")
    path.write_bytes(pickle.dumps([_nuscenes_info([1.8, 4.5, 1.6])]))
    assert len(load_infos(path)) == 1  # NaN velocity alone is fine


def test_nuscenes_empty_split_is_a_dataset_error(tmp_path: Path) -> None:
    from workloads.datasets.nuscenes_dataset import load_infos

    path = tmp_path / "nuscenes_infos_val.pkl"
    path.write_bytes(pickle.dumps([]))
    with pytest.raises(DatasetError, match="no samples \\(an empty split\\)") as info:
        load_infos(path)
    assert str(path) in str(info.value)


def _openlanev2_frame(points: np.ndarray) -> dict[str, Any]:
    camera = {"image_path": "train/00001/image/ring_front_center/315.jpg",
              "intrinsic": {"K": np.eye(3)},
              "extrinsic": {"rotation": np.eye(3), "translation": np.zeros(3)}}
    return {"sensor": {"ring_front_center": camera}, "pose": {"rotation": np.eye(3)},
            "annotation": {"lane_centerline": [{"points": np.zeros((11, 3))}, {"points": points}],
                           "traffic_element": [{"points": np.array([[1.0, 2.0], [3.0, 4.0]])}],
                           "topology_lclc": np.zeros((2, 2)), "topology_lcte": np.zeros((2, 1))}}


def test_openlanev2_non_finite_points_and_empty_split_are_dataset_errors(tmp_path: Path) -> None:
    from workloads.datasets.openlanev2 import load_collection

    bad = np.zeros((11, 3))
    bad[4, 2] = np.nan
    path = tmp_path / "data_dict_subset_A_train.pkl"
    path.write_bytes(pickle.dumps({("train", "00001", "315"): _openlanev2_frame(np.ones((11, 3))),
                                   ("train", "00001", "316"): _openlanev2_frame(bad)}))
    with pytest.raises(DatasetError, match=r"frame train/00001/316 field "
                                           r"'annotation\.lane_centerline\[1\]\.points' has a "
                                           r"non-finite value") as info:
        load_collection(path)
    assert str(info.value).startswith(f"{path}: ")
    path.write_bytes(pickle.dumps({}))
    with pytest.raises(DatasetError, match="a non-empty dict"):
        load_collection(path)


def test_ragged_values_are_still_checked_one_by_one() -> None:
    """The one-call fast path over all sub-records cannot take ragged lists as fine."""
    record = {"anns": [{"box": [1.0, 2.0]}, {"box": [1.0, float("nan"), 3.0]}]}
    with pytest.raises(DatasetError, match=r"r field 'anns\[1\]\.box'"):
        check_finite([("r", record)], ["anns[].box"], "f.json")
    check_finite([("r", {"anns": [{"box": "n/a"}], "x": None})], ["anns[].box", "x"], "f.json")


# OpenLane-V2 roots (issue 24): each broken piece is one DatasetError naming file and field,
# found while the data is read, before any training.
@pytest.fixture(scope="module")
def openlanev2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workloads.datasets.openlanev2_synth import write_synthetic_openlanev2

    return write_synthetic_openlanev2(tmp_path_factory.mktemp("olv2") / "root", seed=1,
                                      train_segments=1, val_segments=1, frames_per_segment=2,
                                      image_scale=0.25)


def _openlanev2_copy(root: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    import shutil

    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    return copy, json.loads((copy / "data_dict_subset_A.json").read_text())


def _first_info(root: Path, data: dict[str, Any], split: str) -> Path:
    seg = sorted(data[split])[0]
    return root / split / seg / "info" / sorted(data[split][seg])[0]


def _collect(root: Path, split: str, tmp_path: Path) -> Any:
    from workloads.datasets.openlanev2 import collection_path, load_collection, read_data_dict
    from workloads.datasets.openlanev2_devkit import centerline_devkit

    return load_collection(collection_path(root, split, tmp_path / "cache",
                                           centerline_devkit().collect, read_data_dict(root)))


def test_openlanev2_data_dict_that_is_a_list(tmp_path: Path) -> None:
    from workloads.datasets.openlanev2 import read_data_dict

    (tmp_path / "data_dict_subset_A.json").write_text("[1, 2, 3]")
    with pytest.raises(DatasetError, match=r"data_dict_subset_A.json: not an OpenLane-V2 data "
                                           r"dict \(a JSON list"):
        read_data_dict(tmp_path)


def test_openlanev2_truncated_frame_json_is_named_before_collect(openlanev2_root: Path,
                                                                 tmp_path: Path) -> None:
    root, data = _openlanev2_copy(openlanev2_root, tmp_path)
    info = _first_info(root, data, "train")
    info.write_bytes(info.read_bytes()[:100])
    with pytest.raises(DatasetError, match="not valid JSON") as error:
        _collect(root, "train", tmp_path)
    assert str(error.value).startswith(f"{info}: ")


@pytest.mark.parametrize("change,field", [
    (lambda frame: frame.pop("annotation"), "field 'annotation' is missing (a val frame"),
    (lambda frame: frame["sensor"]["ring_front_center"]["intrinsic"]["K"][0].__setitem__(
        0, float("nan")), "field 'sensor.ring_front_center.intrinsic.K' has a non-finite value"),
    (lambda frame: frame["sensor"]["ring_front_center"]["extrinsic"].pop("rotation"),
     "field 'sensor.ring_front_center.extrinsic.rotation' is missing"),
], ids=["no-annotation", "nan-intrinsic", "no-rotation"])
def test_openlanev2_val_frame_fields_are_named(change: Any, field: str, openlanev2_root: Path,
                                               tmp_path: Path) -> None:
    root, data = _openlanev2_copy(openlanev2_root, tmp_path)
    info = _first_info(root, data, "val")
    frame = json.loads(info.read_text())
    change(frame)
    info.write_text(json.dumps(frame))  # json writes NaN as the NaN the devkit would read
    with pytest.raises(DatasetError, match=re.escape(field)) as error:
        _collect(root, "val", tmp_path)
    assert str(error.value).startswith(f"{info}: ")


def test_openlanev2_collection_in_the_root_is_checked_too(tmp_path: Path) -> None:
    from workloads.datasets.openlanev2 import load_collection

    frame = _openlanev2_frame(np.ones((11, 3)))
    frame["sensor"]["ring_front_center"]["intrinsic"]["K"] = np.full((3, 3), np.inf)
    path = tmp_path / "data_dict_subset_A_val.pkl"
    path.write_bytes(pickle.dumps({("val", "00001", "315"): frame}))
    with pytest.raises(DatasetError, match=r"frame val/00001/315 field 'sensor\."
                                           r"ring_front_center\.intrinsic\.K' has a non-finite"):
        load_collection(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="not an OpenLane-V2 collection pickle"):
        load_collection(path)


def test_openlanev2_image_of_random_bytes_is_named(openlanev2_root: Path,
                                                    tmp_path: Path) -> None:
    from workloads.datasets.openlanev2 import OpenLaneV2Dataset

    root, data = _openlanev2_copy(openlanev2_root, tmp_path)
    frames = _collect(root, "val", tmp_path)
    key = sorted(frames)[0]
    image = root / frames[key]["sensor"]["ring_front_center"]["image_path"]
    image.write_bytes(os.urandom(4096))
    dataset = OpenLaneV2Dataset(frames, root, ("ring_front_center",), (64, 96), 32, 5,
                                train=False)
    with pytest.raises(DatasetError) as error:
        dataset[0]
    assert str(error.value) == (f"{image}: not an image (field 'sensor.ring_front_center."
                                f"image_path' of frame {'/'.join(key)})")


def test_an_image_with_200000_boxes_is_warned_about_once_with_the_figure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Valid COCO (the format sets no limit, mmdet's YOLOv3 pipeline no cap), but one step
    took 65 s and 12.6 GiB without a word (issue 24)."""
    from PIL import Image

    from workloads.datasets.coco import CocoDetection
    from workloads.yolov3.crowded import warn_crowded_image

    (tmp_path / "train2017").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "train2017" / "a.jpg")
    Image.new("RGB", (64, 48)).save(tmp_path / "train2017" / "b.jpg")
    boxes = 200_000
    anns = [{"id": i, "image_id": 2, "category_id": 1, "bbox": [1, 1, 8, 8], "iscrowd": 0}
            for i in range(boxes)] + [{"id": boxes, "image_id": 1, "category_id": 1,
                                       "bbox": [1, 1, 8, 8], "iscrowd": 0}]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}],
        "annotations": anns, "categories": [{"id": 1, "name": "car"}]}))
    dataset = CocoDetection(tmp_path, "train", 416)
    warn_crowded_image(dataset, 416)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"harness: warning: {dataset.ann_path}: image 2 (b.jpg) has 200,000 boxes; "
                     f"YOLOv3's assigner holds a 200,000 x 10,647 IoU matrix for it at 416 px "
                     f"(~7.9 GiB, more with its temporaries)"]
    dataset.targets[2] = dataset.targets[2][:100]  # a COCO-like image: nothing to say
    warn_crowded_image(dataset, 416)
    assert capsys.readouterr().err == ""
