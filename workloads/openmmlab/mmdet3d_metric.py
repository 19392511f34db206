"""mmdet3d 1.4's `NuScenesMetric` on any device, without patching site-packages.

Two things stop the unmodified metric off CUDA, both replaced only for the duration of one
evaluation (`nuscenes_metric_on_any_device()`), then restored:

- `nusc_box_to_cam_box3d` (module level in mmdet3d/evaluation/metrics/nuscenes_metric.py,
  called by `_format_camera_bbox` for every camera model) moves the boxes, scores and labels
  to the GPU with `.cuda()` before the per-sample 3D NMS; `boxes_to_cam_box3d` builds the
  same tensors where they are (the host);
- nuscenes-devkit's `NuScenesEval` raises on a submission without a single box (its
  filter looks for a box to read the class field from). `NoBoxTolerantEval` passes any other
  submission to the devkit unchanged and, for an empty one, writes the metrics summary the
  devkit defines for no detections (every AP 0, every TP error 1, the devkit's undefined
  errors NaN, NDS 0), which mmdet3d then reads as it reads the devkit's.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator
from unittest import mock

import numpy as np
import torch

# The devkit leaves these TP errors undefined (cones have no heading, neither has attributes;
# nuscenes/eval/detection/evaluate.py).
UNDEFINED_ERRORS = {"traffic_cone": ("attr_err", "vel_err", "orient_err"),
                    "barrier": ("attr_err", "vel_err")}


def boxes_to_cam_box3d(boxes: list[Any]) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """NuScenes boxes (camera frame) to (CameraInstance3DBoxes (N, 9), per-class scores
    (N, 11: the 10 classes and background, as mmdet3d's NMS takes them), labels), on the host:
    centre, mmdet3d's (l, h, w) from the devkit's (w, l, h), yaw negated, camera-frame
    velocity (x, z)."""
    from mmdet3d.structures import CameraInstance3DBoxes

    rows = [[*b.center, b.wlh[1], b.wlh[2], b.wlh[0], -b.orientation.yaw_pitch_roll[0],
             b.velocity[0], b.velocity[2]] for b in boxes]
    tensor = torch.tensor(np.asarray(rows, dtype=np.float32).reshape(-1, 9))
    cam_boxes = CameraInstance3DBoxes(tensor, box_dim=9, origin=(0.5, 0.5, 0.5))
    scores = torch.tensor([float(b.score) for b in boxes], dtype=torch.float32)
    labels = torch.tensor([int(b.label) for b in boxes], dtype=torch.long)
    per_class = scores.new_zeros(len(boxes), 10 + 1)
    per_class[torch.arange(len(boxes)), labels] = scores
    return cam_boxes, per_class, labels


def no_detection_summary(config: Any) -> dict[str, Any]:
    """The devkit's metrics summary (metrics_summary.json) of a submission without boxes."""
    from nuscenes.eval.detection.constants import TP_METRICS
    from nuscenes.eval.detection.data_classes import DetectionMetrics

    metrics = DetectionMetrics(config)
    for name in config.class_names:
        for th in config.dist_ths:
            metrics.add_label_ap(name, th, 0.0)
        for metric in TP_METRICS:
            undefined = metric in UNDEFINED_ERRORS.get(name, ())
            metrics.add_label_tp(name, metric, float("nan") if undefined else 1.0)
    metrics.add_runtime(0.0)
    summary: dict[str, Any] = metrics.serialize()
    return summary


class NoBoxTolerantEval:
    """nuscenes-devkit's NuScenesEval, except for a submission without boxes (see the module
    docstring); same constructor and `main`."""

    devkit_class: Any = None  # the devkit's NuScenesEval (set before it is patched over)

    def __init__(self, nusc: Any, config: Any, result_path: str, eval_set: str,
                 output_dir: str | None = None, verbose: bool = True) -> None:
        with open(result_path, encoding="utf-8") as f:
            results = json.load(f)["results"]
        self.config, self.output_dir = config, output_dir or "."
        self.devkit = (self.devkit_class(nusc, config=config, result_path=result_path,
                                    eval_set=eval_set, output_dir=output_dir, verbose=verbose)
                       if any(results.values()) else None)

    def main(self, plot_examples: int = 0, render_curves: bool = True) -> dict[str, Any]:
        if self.devkit is not None:
            out: dict[str, Any] = self.devkit.main(plot_examples=plot_examples,
                                                   render_curves=render_curves)
            return out
        summary = no_detection_summary(self.config)
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "metrics_summary.json"), "w",
                  encoding="utf-8") as f:
            json.dump(summary, f)
        return summary


@contextlib.contextmanager
def nuscenes_metric_on_any_device() -> Iterator[None]:
    """Within: NuScenesMetric formats camera boxes on the host and scores empty submissions."""
    import nuscenes.eval.detection.evaluate as devkit_eval
    from mmdet3d.evaluation.metrics import nuscenes_metric

    if devkit_eval.NuScenesEval is not NoBoxTolerantEval:
        NoBoxTolerantEval.devkit_class = devkit_eval.NuScenesEval
    with mock.patch.object(nuscenes_metric, "nusc_box_to_cam_box3d", boxes_to_cam_box3d), \
            mock.patch.object(devkit_eval, "NuScenesEval", NoBoxTolerantEval):
        yield
