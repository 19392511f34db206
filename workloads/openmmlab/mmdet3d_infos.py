"""mmdetection3d 1.4's nuScenes info pickles, made from a nuScenes v1.0 root with the devkit.

mmdet3d's `NuScenesDataset` and `NuScenesMetric` read `nuscenes_infos_{train,val}.pkl` in its
"v2" info format (`{"metainfo": ..., "data_list": [...]}`), which mmdet3d's
tools/create_data.py and tools/dataset_converters/update_infos_to_v2.py write; those tools
are not in the wheel. This module writes the same format for camera configs (FCOS3D, PGD:
`load_type='mv_image_based'`), one entry per key sample of the devkit's split:

- `sample_idx`, `token`, `timestamp` (seconds), `ego2global` (4x4, the LIDAR_TOP ego pose,
  which mmdet3d's converter and NuScenesMetric use for every camera of the sample);
- `lidar_points`: `lidar_path` (file name), `num_pts_feats` 5, `lidar2ego`;
- `images`: per camera, in the order NuScenesDataset numbers them and NuScenesMetric decodes
  them (`sample_idx * 6 + camera`: FRONT, FRONT_RIGHT, FRONT_LEFT, BACK, BACK_LEFT,
  BACK_RIGHT), `img_path` (file name: the config's `data_prefix` names the folder),
  `cam2img` (3x3), `cam2ego`, `lidar2cam` (4x4, through both ego poses), `sample_data_token`,
  `timestamp`, `height`, `width`;
- `cam_instances`: per camera, mmdet3d's own `get_nuscenes_2d_boxes` records (2D box clipped
  to 1600x900, `bbox_3d` in the camera frame, `velocity`, `center_2d`, `depth`, labels,
  `attr_label`, `bbox_3d_isvalid`), made by the installed mmdet3d.

LiDAR-frame `instances` and sweeps are not written: LiDAR configs need mmdet3d's own converter.
Where the files go follows workloads/datasets/derived.py (the root when writable, else the
cache), under their own prefix so BEVDepth's `nuscenes_infos_*.pkl` are never overwritten.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DatasetError, MissingExtra
from workloads.datasets.derived import write_pickle

PREFIX = "mmdet3d_nuscenes_infos"
INFO_VERSION = "1.1"
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
           "CAM_BACK_RIGHT")
CLASSES = ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle",
           "pedestrian", "traffic_cone", "barrier")
VERSIONS = ("v1.0-trainval", "v1.0-mini")
# version -> ((devkit split, info file stem), ...); the devkit's eval set of the val split
SPLITS = {"v1.0-mini": (("mini_train", "train"), ("mini_val", "val")),
          "v1.0-trainval": (("train", "train"), ("val", "val"))}
EVAL_SET = {"v1.0-mini": "mini_val", "v1.0-trainval": "val"}
VISIBILITIES = ["", "1", "2", "3", "4"]  # every level, as mmdet3d's converter asks


def version_of(root: Path) -> str:
    """The v1.0 version folder of a nuScenes root."""
    for version in VERSIONS:
        if (Path(root) / version).is_dir():
            return version
    raise DatasetError(f"{root}: not a nuScenes root (no {' or '.join(VERSIONS)} folder)")


def _matrix(rotation: Any, translation: Any) -> np.ndarray:
    from pyquaternion import Quaternion

    m = np.eye(4)
    m[:3, :3] = Quaternion(rotation).rotation_matrix
    m[:3, 3] = translation
    return m


def _pose(nusc: Any, sd: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(sensor2ego, ego2global) of a sample_data record."""
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    ego = nusc.get("ego_pose", sd["ego_pose_token"])
    return _matrix(cs["rotation"], cs["translation"]), _matrix(ego["rotation"], ego["translation"])


def _as_list(m: np.ndarray) -> list[list[float]]:
    return m.astype(np.float32).tolist()


def sample_info(nusc: Any, sample: dict[str, Any], index: int) -> dict[str, Any]:
    """One `data_list` entry (see the module docstring)."""
    from mmdet3d.datasets.convert_utils import get_nuscenes_2d_boxes

    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    lidar2ego, ego2global = _pose(nusc, lidar_sd)
    lidar2global = ego2global @ lidar2ego
    images: dict[str, Any] = {}
    cam_instances: dict[str, list[dict[str, Any]]] = {}
    for cam in CAMERAS:
        sd = nusc.get("sample_data", sample["data"][cam])
        cam2ego, cam_ego2global = _pose(nusc, sd)
        intrinsic = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"]
        lidar2cam = np.linalg.inv(cam_ego2global @ cam2ego) @ lidar2global
        images[cam] = {"img_path": Path(sd["filename"]).name, "cam2img": np.asarray(intrinsic).tolist(),
                       "cam2ego": _as_list(cam2ego), "lidar2cam": _as_list(lidar2cam),
                       "sample_data_token": sd["token"], "timestamp": sd["timestamp"] / 1e6,
                       "height": sd["height"], "width": sd["width"]}
        cam_instances[cam] = get_nuscenes_2d_boxes(nusc, sd["token"], visibilities=VISIBILITIES)
    return {"sample_idx": index, "token": sample["token"], "timestamp": sample["timestamp"] / 1e6,
            "ego2global": _as_list(ego2global),
            "lidar_points": {"num_pts_feats": 5, "lidar_path": Path(lidar_sd["filename"]).name,
                             "lidar2ego": _as_list(lidar2ego)},
            "images": images, "cam_instances": cam_instances}


def create_infos(root: Path, version: str) -> dict[str, dict[str, Any]]:
    """{split stem: {"metainfo", "data_list"}} for the devkit's splits of `version`."""
    try:
        from nuscenes import NuScenes
        from nuscenes.utils import splits
    except ImportError as exc:
        raise MissingExtra("mmdet3d nuScenes configs need nuscenes-devkit: "
                           "pip install nuscenes-devkit") from exc
    if version not in SPLITS:
        raise DatasetError(f"{root}: nuScenes {version} has no train/val split "
                           f"(supported: {', '.join(SPLITS)})")
    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    scene_of = {s["token"]: s["name"] for s in nusc.scene}
    out: dict[str, dict[str, Any]] = {}
    for split, stem in SPLITS[version]:
        names = set(splits.create_splits_scenes()[split])
        samples = sorted((s for s in nusc.sample if scene_of[s["scene_token"]] in names),
                         key=lambda s: (scene_of[s["scene_token"]], s["timestamp"]))
        data_list = [sample_info(nusc, s, i) for i, s in enumerate(samples)]
        metainfo = {"categories": {c: i for i, c in enumerate(CLASSES)}, "dataset": "nuscenes",
                    "version": version, "info_version": INFO_VERSION}
        out[stem] = {"metainfo": metainfo, "data_list": data_list}
    return out


def info_paths(root: Path, cache_dir: Path | None = None) -> tuple[str, dict[str, Path]]:
    """(version, {"train": path, "val": path}) of root's mmdet3d infos, written first when
    missing (derived.py's policy: the root when writable, else the cache)."""
    from workloads.datasets.nuscenes import info_files

    version = version_of(root)
    paths, present = info_files(root, version, cache_dir, prefix=PREFIX)
    if not present:
        for stem, infos in create_infos(root, version).items():
            if not infos["data_list"]:
                raise DatasetError(f"{root}: no key samples in the {stem} split of {version} "
                                   f"(the devkit's scene lists)")
            write_pickle(paths[stem], infos)
    return version, paths
