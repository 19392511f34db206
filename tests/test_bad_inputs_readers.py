"""Every reader (issue 15 item 4): an empty split and a non-finite annotation number are a
DatasetError naming the file and the field (COCO's cases are in tests/test_bad_inputs.py)."""
from __future__ import annotations

import json
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
    return {"annotation": {"lane_centerline": [{"points": np.zeros((11, 3))}, {"points": points}],
                           "traffic_element": [{"points": np.array([[1.0, 2.0], [3.0, 4.0]])}]}}


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
