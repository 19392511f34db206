"""What the OpenLane-V2 reader checks in a frame (a per-frame info JSON, or a frame of a
devkit collection pickle) before any training: one DatasetError naming the file, the frame
and the field.

Without these, a frame the devkit's `collect()` cannot read ends as an unnamed JSONDecodeError
or KeyError, a val frame without `annotation` fails in the devkit's evaluation after the
whole training, and a NaN camera intrinsic gives NaN projections and an `ok` run.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from harness.errors import DatasetError
from workloads.datasets.checks import check_finite

# Each camera's geometry: the field under sensor.<camera> and its shape.
CAMERA_FIELDS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("intrinsic.K", (3, 3)), ("extrinsic.rotation", (3, 3)), ("extrinsic.translation", (3,)))
# The ground truth the training targets and the official metric read (train and val).
ANNOTATION_LISTS = ("lane_centerline", "traffic_element", "topology_lclc", "topology_lcte")
# Annotation geometry checked for NaN/Inf (lists of sub-records, see checks.check_finite).
ANNOTATION_NUMBERS = ("annotation.lane_centerline[].points", "annotation.traffic_element[].points")
ANNOTATED_SPLITS = ("train", "val")


def _get(record: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(record, Mapping) or part not in record:
            return None
        record = record[part]
    return record


def _camera_problem(value: Any, shape: tuple[int, ...]) -> str | None:
    """Why one camera field is unusable, or None."""
    if value is None:
        return "is missing"
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return f"is not a {'x'.join(map(str, shape))} array of numbers"
    if array.shape != shape:
        return f"has shape {list(array.shape)}, expected {list(shape)}"
    if not np.isfinite(array).all():
        return f"has a non-finite value ({array.round(4).tolist()})"
    return None


def check_frame(frame: Any, split: str, where: str, geometry: bool = True) -> None:
    """One frame; `where` starts the message: "FILE:" for an info JSON, "FILE: frame KEY"
    for a frame of a collection (as check_finite names one)."""
    if not isinstance(frame, Mapping):
        raise DatasetError(f"{where} not a frame (a {type(frame).__name__}, expected an object)")
    sensor = frame.get("sensor")
    if not isinstance(sensor, Mapping) or not sensor:
        raise DatasetError(f"{where} field 'sensor' is missing or empty")
    if not isinstance(frame.get("pose"), Mapping):
        raise DatasetError(f"{where} field 'pose' is missing or not an object")
    for cam, meta in sensor.items():
        if not isinstance(_get(meta, "image_path"), str):
            raise DatasetError(f"{where} field 'sensor.{cam}.image_path' is missing")
        for name, shape in CAMERA_FIELDS if geometry else ():
            problem = _camera_problem(_get(meta, name), shape)
            if problem is not None:
                raise DatasetError(f"{where} field 'sensor.{cam}.{name}' {problem}")
    if split not in ANNOTATED_SPLITS:
        return
    ann = frame.get("annotation")
    if not isinstance(ann, Mapping):
        raise DatasetError(f"{where} field 'annotation' is missing (a {split} frame needs its "
                           f"ground truth)")
    for name in ANNOTATION_LISTS:
        if name not in ann:
            raise DatasetError(f"{where} field 'annotation.{name}' is missing")


def check_frames(frames: Mapping[tuple[str, ...], Any], source: str) -> None:
    """Every frame of a collection (keys (split, segment, timestamp)): structure, camera
    geometry, then the annotation points (NaN/Inf)."""
    named: list[tuple[str, Any]] = []
    for key, frame in frames.items():
        if not (isinstance(key, tuple) and len(key) == 3):
            raise DatasetError(f"{source}: frame key {key!r:.80} is not (split, segment, "
                               f"timestamp)")
        name = f"frame {'/'.join(map(str, key))}"
        check_frame(frame, str(key[0]), f"{source}: {name}", geometry=False)
        named.append((name, frame))
    if not _geometry_fine(named):  # then find the first bad field, frame by frame
        for (name, frame), key in zip(named, frames):
            check_frame(frame, str(key[0]), f"{source}: {name}")
    check_finite(named, ANNOTATION_NUMBERS, source)


def _geometry_fine(named: list[tuple[str, Any]]) -> bool:
    """Every camera field of every frame of its shape and finite, in one array per field
    (a real split has ~20,000 frames of 7 cameras: one call instead of 400,000)."""
    for name, shape in CAMERA_FIELDS:
        values = [_get(meta, name) for _, frame in named for meta in frame["sensor"].values()]
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):  # ragged or not numbers
            return False
        if array.shape != (len(values), *shape) or not np.isfinite(array).all():
            return False
    return True
