"""A warning, once per split, for an image with so many boxes that YOLOv3's assigner needs
gigabytes for it (issue 24: 200,000 boxes on one image took a 65 s step and 12.6 GiB).

The input is valid COCO (the format sets no limit) and mmdet's YOLOv3 pipeline has no cap
on the ground truth per image, so it is trained as given; the warning gives the figure.
"""
from __future__ import annotations

import sys

from workloads.datasets.coco import CocoDetection
from workloads.yolov3.model import STRIDES

ANCHORS_PER_CELL = 3
# An IoU matrix from this size on is worth a word (a COCO image has at most ~100 boxes:
# ~4 MiB at 416 px).
WARN_BYTES = 512 * 2**20


def priors(side: int) -> int:
    """Anchor priors over the three output grids of a side x side input (10,647 at 416)."""
    return ANCHORS_PER_CELL * sum((side // s) ** 2 for s in STRIDES)


def crowded_image_line(dataset: CocoDetection, side: int) -> str | None:
    """The warning for the split's most crowded image, or None when it is harmless."""
    count, image = dataset.most_boxes()
    n_priors = priors(side)
    iou_bytes = count * n_priors * 4  # float32 IoU of every box with every prior
    if iou_bytes < WARN_BYTES:
        return None
    return (f"{dataset.ann_path}: image {image.get('id')} ({image.get('file_name')}) has "
            f"{count:,} boxes; YOLOv3's assigner holds a {count:,} x {n_priors:,} IoU matrix "
            f"for it at {side} px (~{iou_bytes / 2**30:.1f} GiB, more with its temporaries)")


def warn_crowded_image(dataset: CocoDetection, side: int) -> None:
    line = crowded_image_line(dataset, side)
    if line is not None:
        print(f"harness: warning: {line}", file=sys.stderr, flush=True)
