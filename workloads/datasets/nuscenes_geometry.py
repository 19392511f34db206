"""Small rigid-transform helpers shared by the nuScenes writer, reader and metric.

Quaternions follow nuScenes/pyquaternion: (w, x, y, z), rotating sensor -> parent frame.
Written in numpy so the reader and the synthetic writer work without pyquaternion.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def quat_to_matrix(q: Sequence[float]) -> np.ndarray:
    """3x3 rotation matrix of a (possibly unnormalised) quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) with w >= 0 of a 3x3 rotation matrix (Shepperd's method)."""
    r = np.asarray(r, dtype=np.float64)
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q = np.asarray(q)
    return q if q[0] >= 0 else -q


def yaw_to_quat(yaw: float) -> np.ndarray:
    """Rotation about +z by yaw radians."""
    return np.array([np.cos(yaw / 2.0), 0.0, 0.0, np.sin(yaw / 2.0)])


def matrix_yaw(r: np.ndarray) -> float:
    """Heading of the rotated x axis in the parent xy plane (pyquaternion's yaw)."""
    return float(np.arctan2(r[1, 0], r[0, 0]))


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose_matrix(rotation: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """4x4 homogeneous transform child -> parent from a nuScenes record's rotation/translation."""
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(rotation)
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def record_matrix(record: Mapping) -> np.ndarray:
    """pose_matrix of a calibrated_sensor or ego_pose record."""
    return pose_matrix(record["rotation"], record["translation"])


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points."""
    return pts @ m[:3, :3].T + m[:3, 3]


def key_ego_pose(cam_infos: Mapping[str, Mapping], cams: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The key sample's ego frame as BEVDepth defines it: the element-wise mean of the
    cameras' ego-pose quaternions and translations (cameras fire at slightly different
    times). Returns (rotation quaternion (w, x, y, z), translation)."""
    rot = np.mean([cam_infos[c]["ego_pose"]["rotation"] for c in cams], axis=0)
    trans = np.mean([cam_infos[c]["ego_pose"]["translation"] for c in cams], axis=0)
    return rot, trans
