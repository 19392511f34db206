"""nuScenes detection metric (mAP, mATE, mASE, mAOE, mAVE, mAAE, NDS) for the nuScenes
detection workloads (BEVDepth, StreamPETR), through nuscenes-devkit's own accumulate /
calc_ap / calc_tp / DetectionMetrics.

A prediction is `{"sample_token", "boxes" (K, 9): x, y, z, w, l, h, yaw, vx, vy in the key
sample's ego frame (z = box centre, the dataset's gt_boxes convention), "scores" (K,),
"labels" (K,) indices into class_names}`; optional "ego2global_translation"/"rotation"
override the key ego pose taken from the infos (BEVDepth's mean camera ego pose).
Boxes go to the global frame as BEVDepth's evaluator does (rotate by the ego pose, then
translate; attributes from its velocity rule). Ground truth and filtering follow the
devkit's DetectionEval, rebuilt from the val infos alone: class ranges on the distance to
the LIDAR ego pose, GT without LIDAR/radar points dropped, cycles in bike racks dropped,
barrier/cone TP exemptions. `to_nuscenes_submission` gives the results JSON the devkit's
DetectionEval reads, built from the same records, so both see identical boxes.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np

from harness.errors import DatasetError, MissingExtra, UsageError
from workloads.datasets.nuscenes_dataset import DETECTION_NAME
from workloads.datasets.nuscenes_geometry import (
    key_ego_pose,
    quat_to_matrix,
)

MISSING_DEVKIT = "workload bevdepth needs nuscenes-devkit: pip install 'perception-harness[bevdepth]'"
# BEVDepth's DetNuscEvaluator.DefaultAttribute.
DEFAULT_ATTRIBUTE = {
    "car": "vehicle.parked", "pedestrian": "pedestrian.moving", "trailer": "vehicle.parked",
    "truck": "vehicle.parked", "bus": "vehicle.moving", "motorcycle": "cycle.without_rider",
    "construction_vehicle": "vehicle.parked", "bicycle": "cycle.without_rider", "barrier": "",
    "traffic_cone": "",
}
_VEHICLES = ("car", "construction_vehicle", "bus", "truck", "trailer")
METRIC_KEYS = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE",
               "attr_err": "mAAE"}


def _devkit() -> SimpleNamespace:
    try:
        from nuscenes.eval.common.config import config_factory
        from nuscenes.eval.common.data_classes import EvalBoxes
        from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp
        from nuscenes.eval.detection.constants import TP_METRICS
        from nuscenes.eval.detection.data_classes import (
            DetectionBox,
            DetectionConfig,
            DetectionMetrics,
        )
        from nuscenes.utils.data_classes import Box
        from nuscenes.utils.geometry_utils import points_in_box
        from pyquaternion import Quaternion
    except ImportError as e:
        raise MissingExtra(MISSING_DEVKIT) from e
    return SimpleNamespace(
        config_factory=config_factory, EvalBoxes=EvalBoxes, accumulate=accumulate, calc_ap=calc_ap,
        calc_tp=calc_tp, TP_METRICS=TP_METRICS, DetectionBox=DetectionBox, DetectionConfig=DetectionConfig,
        DetectionMetrics=DetectionMetrics, Box=Box, points_in_box=points_in_box, Quaternion=Quaternion)


def _attribute(name: str, velocity_xy: np.ndarray) -> str:
    """BEVDepth's rule: moving above 0.2 m/s, else the class's parked/standing default."""
    if np.hypot(*velocity_xy) > 0.2:
        if name in _VEHICLES:
            return "vehicle.moving"
        return "cycle.with_rider" if name in ("bicycle", "motorcycle") else DEFAULT_ATTRIBUTE[name]
    if name == "pedestrian":
        return "pedestrian.standing"
    return "vehicle.stopped" if name == "bus" else DEFAULT_ATTRIBUTE[name]


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; torch itself is not needed here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _info_index(infos: Sequence[Mapping]) -> dict[str, Mapping]:
    index = {}
    for i, info in enumerate(infos):
        for field in ("sample_token", "cam_infos", "lidar_infos", "ann_infos"):
            if field not in info:
                raise DatasetError(f"<val infos>: info {i} has no field '{field}'")
        index[info["sample_token"]] = info
    return index


def prediction_records(predictions: Sequence[Mapping], infos: Sequence[Mapping], *,
                       class_names: Sequence[str], max_boxes: int = 500) -> dict[str, list[dict]]:
    """Predictions as the devkit's result records (global frame), one list per val sample,
    in info order; a sample keeps its `max_boxes` highest scores (the devkit's cap)."""
    index = _info_index(infos)
    results: dict[str, list[dict]] = {token: [] for token in index}
    for pred in predictions:
        token = pred["sample_token"]
        if token not in index:
            raise UsageError(f"prediction for sample {token}, which is not in the val infos")
        boxes = _numpy(pred["boxes"]).reshape(-1, 9)
        scores, labels = _numpy(pred["scores"]).reshape(-1), _numpy(pred["labels"]).reshape(-1).astype(int)
        # The devkit asserts on these deep inside accumulate(); say which sample is at fault.
        if not (len(boxes) == len(scores) == len(labels)):
            raise UsageError(f"prediction for sample {token}: {len(boxes)} boxes, {len(scores)} scores, "
                             f"{len(labels)} labels")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()) or (boxes[:, 3:6] <= 0).any():
            raise UsageError(f"prediction for sample {token} has non-finite values or a size <= 0")
        if len(labels) and not (0 <= labels.min() and labels.max() < len(class_names)):
            raise UsageError(f"prediction for sample {token} has a label outside 0..{len(class_names) - 1}")
        if "ego2global_rotation" in pred:
            rot_q, trans = np.asarray(pred["ego2global_rotation"]), np.asarray(pred["ego2global_translation"])
        else:
            cam_infos = index[token]["cam_infos"]
            rot_q, trans = key_ego_pose(cam_infos, list(cam_infos))
        w1, x1, y1, z1 = rot_q / np.linalg.norm(rot_q)
        rot = quat_to_matrix((w1, x1, y1, z1))
        order = np.argsort(-scores, kind="stable")[:max_boxes]
        b, kept_scores = boxes[order], scores[order]
        centers = b[:, :3] @ rot.T + trans
        vel = b[:, 7:9] @ rot[:2, :2].T  # (vx, vy, 0) rotated; z is dropped as in BEVDepth
        # ego rotation * yaw rotation (a quaternion about z), per box.
        w2, z2 = np.cos(b[:, 6] / 2), np.sin(b[:, 6] / 2)
        quats = np.stack([w1 * w2 - z1 * z2, x1 * w2 + y1 * z2, y1 * w2 - x1 * z2, w1 * z2 + z1 * w2], 1)
        names = [class_names[k] for k in labels[order]]
        for k, name in enumerate(names):
            results[token].append(dict(
                sample_token=token, translation=centers[k].tolist(), size=b[k, 3:6].tolist(),
                rotation=quats[k].tolist(), velocity=vel[k].tolist(), detection_name=name,
                detection_score=float(kept_scores[k]), attribute_name=_attribute(name, vel[k])))
    return results


def to_nuscenes_submission(predictions: Sequence[Mapping], infos: Sequence[Mapping], *,
                           class_names: Sequence[str], max_boxes: int = 500) -> dict:
    """The results JSON (meta + results) that the devkit's DetectionEval reads."""
    meta = dict(use_camera=True, use_lidar=False, use_radar=False, use_map=False, use_external=False)
    return dict(meta=meta, results=prediction_records(predictions, infos, class_names=class_names,
                                                      max_boxes=max_boxes))


def _gt_boxes(dk: SimpleNamespace, infos: Sequence[Mapping]) -> tuple[Any, dict[str, list]]:
    """The devkit's load_gt from infos: detection classes only, NaN velocity where the devkit
    cannot estimate one; also the bike racks of each sample, for the cycle filter."""
    gt, racks = dk.EvalBoxes(), {}
    for i, info in enumerate(infos):
        boxes, racks[info["sample_token"]] = [], []
        for ann in info["ann_infos"]:
            if ann["category_name"] == "static_object.bicycle_rack":
                racks[info["sample_token"]].append(
                    dk.Box(ann["translation"], ann["size"], dk.Quaternion(ann["rotation"])))
            name = DETECTION_NAME.get(ann["category_name"])
            if name is None:
                continue
            attrs = ann.get("attribute_names")
            if attrs is None or len(attrs) > 1:
                raise DatasetError(f"<val infos>: info {i} annotation {ann.get('token')} needs exactly one "
                                   "entry or none in field 'attribute_names'")
            vel = ann["velocity"][:2] if ann.get("velocity_valid", True) else (np.nan, np.nan)
            boxes.append(dk.DetectionBox(
                sample_token=info["sample_token"], translation=tuple(ann["translation"]),
                size=tuple(ann["size"]), rotation=tuple(ann["rotation"]), velocity=tuple(map(float, vel)),
                num_pts=int(ann["num_lidar_pts"] + ann["num_radar_pts"]), detection_name=name,
                attribute_name=attrs[0] if attrs else ""))
        gt.add_boxes(info["sample_token"], boxes)
    return gt, racks


def _filter(dk: SimpleNamespace, boxes: Any, index: Mapping, racks: Mapping, class_range: Mapping) -> Any:
    """The devkit's add_center_dist + filter_eval_boxes, with the infos' LIDAR ego pose."""
    for token in boxes.sample_tokens:
        ego = np.asarray(index[token]["lidar_infos"]["LIDAR_TOP"]["ego_pose"]["translation"])
        kept = []
        for box in boxes[token]:
            box.ego_translation = tuple(np.asarray(box.translation) - ego)
            if box.ego_dist >= class_range[box.detection_name] or box.num_pts == 0:
                continue
            if box.detection_name in ("bicycle", "motorcycle") and any(
                    dk.points_in_box(r, np.asarray(box.translation)[:, None]).sum() > 0 for r in racks[token]):
                continue
            kept.append(box)
        boxes.boxes[token] = kept
    return boxes


def detection_metrics(predictions: Sequence[Mapping], infos: Sequence[Mapping], *,
                      class_names: Sequence[str], eval_config: Any = "detection_cvpr_2019") -> Any:
    """The devkit's DetectionMetrics (per-class APs and TP errors: `.serialize()`)."""
    dk = _devkit()
    cfg = dk.config_factory(eval_config) if isinstance(eval_config, str) else eval_config
    unknown = set(class_names) - set(cfg.class_names)
    if unknown:
        raise UsageError(f"class names {sorted(unknown)} are not in the eval config's {cfg.class_names}")
    index = _info_index(infos)
    records = prediction_records(predictions, infos, class_names=class_names, max_boxes=cfg.max_boxes_per_sample)
    pred = dk.EvalBoxes()
    for token, recs in records.items():
        pred.add_boxes(token, [dk.DetectionBox.deserialize(r) for r in recs])
    gt, racks = _gt_boxes(dk, infos)
    gt, pred = (_filter(dk, b, index, racks, cfg.class_range) for b in (gt, pred))
    metrics = dk.DetectionMetrics(cfg)
    for name in cfg.class_names:
        data = {th: dk.accumulate(gt, pred, name, cfg.dist_fcn_callable, th) for th in cfg.dist_ths}
        for th, md in data.items():
            metrics.add_label_ap(name, th, dk.calc_ap(md, cfg.min_recall, cfg.min_precision))
        for metric in dk.TP_METRICS:
            # The devkit leaves these undefined: cones have no heading, neither has attributes.
            if (name == "traffic_cone" and metric in ("attr_err", "vel_err", "orient_err")) or (
                    name == "barrier" and metric in ("attr_err", "vel_err")):
                tp = np.nan
            else:
                tp = dk.calc_tp(data[cfg.dist_th_tp], cfg.min_recall, metric)
            metrics.add_label_tp(name, metric, tp)
    return metrics


def evaluate_detections(predictions: Sequence[Mapping], infos: Sequence[Mapping], *,
                        class_names: Sequence[str], eval_config: Any = "detection_cvpr_2019"
                        ) -> dict[str, float]:
    """mAP, mATE, mASE, mAOE, mAVE, mAAE, NDS over the samples of `infos` (the val split)."""
    m = detection_metrics(predictions, infos, class_names=class_names, eval_config=eval_config)
    errors = m.tp_errors
    out = {"mAP": float(m.mean_ap)}
    out.update({key: float(errors[name]) for name, key in METRIC_KEYS.items()})
    out["NDS"] = float(m.nd_score)
    return out
