"""COCO bbox metrics through the official devkit (pycocotools' COCOeval).

pycocotools is imported inside the function so the workload module imports without it
(the harness reports the missing extra instead of failing at plugin load).
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

from workloads.datasets.coco import to_coco_results  # noqa: F401 - the workload's import

# Order of COCOeval.stats for iouType="bbox".
STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


def coco_bbox_metrics(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    """COCOeval bbox over every GT image. `gt` is an instances json dict (with area and
    iscrowd on each annotation). Undefined stats (-1, e.g. APs with no small objects) are
    left out; with no detections at all every defined stat is 0."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:  # loadRes([]) raises; no detections means zero precision and recall
        return {name: 0.0 for name in STAT_NAMES[:3]}
    # COCOeval writes 'ignore' into the annotations it reads: hand it copies.
    gt_copy = dict(gt, annotations=[dict(a) for a in gt["annotations"]])
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # the devkit prints progress and the summary
        coco_gt = COCO()
        coco_gt.dataset = gt_copy
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats) if v >= 0}
