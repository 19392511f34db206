"""CBGS's class-balanced sampling for the nuScenes workloads (`--set use_cbgs=true`).

As BEVDepth's NuscDetDataset._get_sample_indices (bevdepth/datasets/nusc_det_dataset.py,
after mmdet3d's CBGSDataset): every sample is listed under each detection class it holds
(by annotation names, before any point filter), and each class's list is resampled with
replacement to len * ratio samples, ratio = (1 / classes) / the class's share of all listings,
so every class is seen about equally often. The indices are drawn once, from numpy's global
generator (seeded by the run), when the train split is built; the epoch grows accordingly.
A class absent from the split adds nothing (the original would divide by zero there).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from harness.errors import DatasetError
from workloads.datasets.nuscenes_dataset import DETECTION_NAME


def class_balanced_indices(infos: Sequence[dict[str, Any]], classes: Sequence[str]) -> list[int]:
    listed: dict[int, list[int]] = {i: [] for i in range(len(classes))}
    for idx, info in enumerate(infos):
        names = {DETECTION_NAME.get(ann["category_name"]) for ann in info["ann_infos"]}
        for name in names:
            if name in classes:
                listed[classes.index(name)].append(idx)
    total = sum(len(v) for v in listed.values())
    if total == 0:
        raise DatasetError("use_cbgs: no train sample holds an object of the detection classes")
    indices: list[int] = []
    for members in listed.values():
        if members:
            ratio = (1.0 / len(classes)) / (len(members) / total)
            indices += np.random.choice(members, int(len(members) * ratio)).tolist()
    return indices


class ClassBalanced(torch.utils.data.Dataset):
    """`base` seen through the resampled indices (its items, its collate)."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]
