"""CBGS resampling as BEVDepth's _get_sample_indices: rare classes are drawn up, every class
ends up listed about equally often."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from harness.errors import DatasetError
from workloads.datasets.cbgs import ClassBalanced, class_balanced_indices

CLASSES = ("car", "pedestrian", "bicycle")


def _info(*names: str) -> dict:
    return {"ann_infos": [{"category_name": n} for n in names]}


def test_rare_classes_are_drawn_up_to_an_equal_share() -> None:
    np.random.seed(0)
    infos = ([_info("vehicle.car")] * 80 + [_info("vehicle.car", "human.pedestrian.adult")] * 15
             + [_info("vehicle.bicycle")] * 5 + [_info("movable_object.barrier")] * 3)
    idx = class_balanced_indices(infos, CLASSES)
    # listings: car 95, pedestrian 15, bicycle 5 (total 115); each class drawn to ~115/3
    per_class = collections.Counter()
    for i in idx:
        for ann in infos[i]["ann_infos"]:
            per_class[ann["category_name"]] += 1
    assert len(idx) == int(95 * (1 / 3) / (95 / 115)) + int(15 * (1 / 3) / (15 / 115)) + int(
        5 * (1 / 3) / (5 / 115))
    assert max(idx) < 100  # the barrier-only samples are never listed
    bicycles = sum(1 for i in idx if i >= 95)
    assert bicycles == int(115 / 3)
    ds = ClassBalanced(list(range(len(infos))), idx)
    assert len(ds) == len(idx) and [ds[k] for k in range(3)] == idx[:3]


def test_a_split_without_detection_classes_is_one_line() -> None:
    with pytest.raises(DatasetError, match="use_cbgs"):
        class_balanced_indices([_info("movable_object.barrier")], CLASSES)
