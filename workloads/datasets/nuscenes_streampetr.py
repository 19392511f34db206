"""StreamPETR's temporal nuScenes infos (its create_data_nusc.py with the `nuscenes2d` tag),
made through nuscenes-devkit from any nuScenes root, real or synthetic.

Each info keeps the shared converter's BEVDepth record (nuscenes.py `_sample_info`: the
metric rebuilds the devkit's GT from `ann_infos`) and adds StreamPETR's fields:

- `token`, `prev`, `next`, `scene_token`, `frame_idx` (key frame index in its scene),
  `timestamp` (microseconds, as nuScenes; the dataset turns it into float64 seconds).
- `lidar2ego`, `ego2global` (4x4, of the LIDAR_TOP key frame) and `lidar2global`: the
  reference frame of boxes and cameras is the LIDAR frame, as in StreamPETR.
- `sweeps`: the LIDAR sample_data before this key frame (newest first, at most
  `max_sweeps`), each with `data_path`, `timestamp`, `sensor2lidar`; empty on a scene's
  first key frame -- StreamPETR starts a sequence there.
- `cams[CAM]`: `data_path`, `timestamp`, `cam_intrinsic` (3x3), `cam2lidar` (4x4, through
  each camera's own ego pose), `width`, `height`, and the 2D targets of the auxiliary
  head: `bboxes2d` (K, 4) xyxy pixels, `labels2d` (K,), `centers2d` (K, 2) the projected
  3D centre, `depths` (K,) the centre's camera depth. A box counts where its centre is in
  front of the camera and its projected corners (those in front) cover >= 1 pixel of the
  image. Deviation: the 2D box is the clipped bounding rectangle of those corners
  (the devkit's post_process_coords intersects their convex hull with the image, a
  little tighter for boxes cut by the border).
- `gt_boxes` (M, 7): x, y, z (geometric centre), w, l, h, yaw in the LIDAR frame;
  `gt_velocity` (M, 2) in the LIDAR frame (NaN where the devkit cannot estimate one: the
  loss then drops that target, as StreamPETR); `gt_names`; `gt_labels` (class index, -1
  for non-detection categories); `num_lidar_pts`, `num_radar_pts`, `valid_flag`
  (lidar + radar points > 0, StreamPETR's use_valid_flag).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UsageError
from workloads.datasets.derived import write_pickle
from workloads.datasets.nuscenes import (
    SPLITS,
    _sample_info,
    _scene_samples,
    info_files,
    load_infos,
    open_nuscenes,
)
from workloads.datasets.nuscenes_dataset import CLASSES, DETECTION_NAME
from workloads.datasets.nuscenes_geometry import matrix_yaw, quat_to_matrix, record_matrix

# StreamPETR's camera order (its converter's camera_types).
STREAMPETR_CAMS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                   "CAM_BACK_RIGHT")
INFO_STEM = "streampetr_infos"


def _inv(m: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def _sd_pose(nusc: Any, sd: dict) -> np.ndarray:
    """sensor -> global of one sample_data (its calibration and its own ego pose)."""
    return (record_matrix(nusc.get("ego_pose", sd["ego_pose_token"]))
            @ record_matrix(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])))


def box_corners(center: np.ndarray, size_wlh: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """(8, 3) corners of a box (nuScenes wlh: l along the box x, w along its y)."""
    w, length, h = size_wlh
    x = np.array([1, 1, 1, 1, -1, -1, -1, -1]) * length / 2
    y = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    z = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * h / 2
    return np.stack([x, y, z], 1) @ rot.T + center


def _boxes_2d(anns: list[dict], global2cam: np.ndarray, k: np.ndarray, width: int, height: int
              ) -> dict[str, np.ndarray]:
    boxes, labels, centers, depths = [], [], [], []
    for ann in anns:
        name = DETECTION_NAME.get(ann["category_name"])
        if name is None:
            continue
        rot = global2cam[:3, :3] @ quat_to_matrix(ann["rotation"])
        center = global2cam[:3, :3] @ np.asarray(ann["translation"], np.float64) + global2cam[:3, 3]
        if center[2] <= 0:
            continue
        corners = box_corners(center, np.asarray(ann["size"], np.float64), rot)
        corners = corners[corners[:, 2] > 0]
        uv = corners @ k.T
        uv = uv[:, :2] / uv[:, 2:3]
        x1, y1 = np.clip(uv.min(0), 0, [width, height])
        x2, y2 = np.clip(uv.max(0), 0, [width, height])
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        c = k @ center
        boxes.append([x1, y1, x2, y2])
        labels.append(CLASSES.index(name))
        centers.append(c[:2] / c[2])
        depths.append(center[2])
    return dict(bboxes2d=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels2d=np.asarray(labels, np.int64), centers2d=np.asarray(centers, np.float32).reshape(-1, 2),
                depths=np.asarray(depths, np.float32))


def _lidar_sweeps(nusc: Any, sd: dict, global2lidar: np.ndarray, max_sweeps: int) -> list[dict]:
    """mmdet3d's converter: follow LIDAR `prev` links, key frames or not, newest first."""
    sweeps = []
    while len(sweeps) < max_sweeps and sd["prev"]:
        sd = nusc.get("sample_data", sd["prev"])
        sweeps.append(dict(data_path=sd["filename"], timestamp=sd["timestamp"],
                           sensor2lidar=global2lidar @ _sd_pose(nusc, sd)))
    return sweeps


def temporal_fields(nusc: Any, sample: dict, frame_idx: int, anns: list[dict], max_sweeps: int = 10) -> dict:
    """StreamPETR's fields of one key sample (module doc)."""
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    l2e = record_matrix(nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"]))
    e2g = record_matrix(nusc.get("ego_pose", lidar_sd["ego_pose_token"]))
    l2g = e2g @ l2e
    g2l = _inv(l2g)
    out: dict[str, Any] = dict(token=sample["token"], prev=sample["prev"], next=sample["next"],
                               frame_idx=frame_idx, lidar2ego=l2e, ego2global=e2g, lidar2global=l2g,
                               sweeps=_lidar_sweeps(nusc, lidar_sd, g2l, max_sweeps))
    cams = {}
    for cam in STREAMPETR_CAMS:
        sd = nusc.get("sample_data", sample["data"][cam])
        c2g = _sd_pose(nusc, sd)
        k = np.asarray(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"], np.float64)
        cams[cam] = dict(data_path=sd["filename"], timestamp=sd["timestamp"], cam_intrinsic=k,
                         cam2lidar=g2l @ c2g, width=sd["width"], height=sd["height"],
                         **_boxes_2d(anns, _inv(c2g), k, sd["width"], sd["height"]))
    out["cams"] = cams
    boxes, vels, names, labels = [], [], [], []
    for ann in anns:
        rot = g2l[:3, :3] @ quat_to_matrix(ann["rotation"])
        center = g2l[:3, :3] @ np.asarray(ann["translation"], np.float64) + g2l[:3, 3]
        boxes.append([*center, *ann["size"], matrix_yaw(rot)])
        v = np.asarray(ann["velocity"], np.float64) if ann["velocity_valid"] else np.full(3, np.nan)
        vels.append((g2l[:3, :3] @ v)[:2])
        name = DETECTION_NAME.get(ann["category_name"], ann["category_name"])
        names.append(name)
        labels.append(CLASSES.index(name) if name in CLASSES else -1)
    lidar_pts = np.asarray([a["num_lidar_pts"] for a in anns], np.int64)
    radar_pts = np.asarray([a["num_radar_pts"] for a in anns], np.int64)
    out.update(gt_boxes=np.asarray(boxes, np.float64).reshape(-1, 7),
               gt_velocity=np.asarray(vels, np.float64).reshape(-1, 2), gt_names=names,
               gt_labels=np.asarray(labels, np.int64), num_lidar_pts=lidar_pts, num_radar_pts=radar_pts,
               valid_flag=(lidar_pts + radar_pts) > 0)
    return out


def create_streampetr_infos(root: Path, version: str, *, max_sweeps: int = 10) -> dict[str, list[dict]]:
    """Infos per split ('train'/'val', or 'test'), scene by scene in time order."""
    if version not in SPLITS:
        raise UsageError(f"unknown nuScenes version {version!r} (known: {', '.join(SPLITS)})")
    nusc = open_nuscenes(Path(root), version)
    from nuscenes.utils.splits import create_splits_scenes

    scenes = create_splits_scenes()
    attr_names = {a["token"]: a["name"] for a in nusc.attribute}
    out = {}
    for split, stem in SPLITS[version]:
        wanted, infos = set(scenes[split]), []
        for scene in nusc.scene:
            if scene["name"] not in wanted:
                continue
            for frame_idx, sample in enumerate(_scene_samples(nusc, scene)):
                info = _sample_info(nusc, sample, scene["name"], attr_names, 0, 0)
                info.update(temporal_fields(nusc, sample, frame_idx, info["ann_infos"], max_sweeps))
                infos.append(info)
        out[stem] = infos
    return out


def streampetr_info_files(root: Path, version: str, cache_dir: Path | None = None
                          ) -> tuple[dict[str, Path], bool]:
    """Where `streampetr_infos_<split>.pkl` of a root are, or go (the derived-files rule of
    derived.py: the root if it has them or is writable, else the cache)."""
    return info_files(root, version, cache_dir, prefix=INFO_STEM)


def load_or_create_streampetr_infos(root: Path, version: str, cache_dir: Path | None = None
                                    ) -> dict[str, list[dict]]:
    """`streampetr_infos_<split>.pkl` of a root, written (atomically) first if any is missing:
    into the root when it is writable, else into the cache (`cache_dir`, default
    $HARNESS_CACHE), so a read-only dataset mount works."""
    paths, present = streampetr_info_files(root, version, cache_dir)
    if not paths or not present:
        infos = create_streampetr_infos(root, version)  # names an unknown version
        for stem, rows in infos.items():
            write_pickle(paths[stem], rows)
    # read back through load_infos on the first run too: its checks hold on every run
    return {s: load_infos(p) for s, p in paths.items()}
