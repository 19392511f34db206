"""nuScenes for camera-BEV detection (BEVDepth): info files, the training/eval dataset and
the synthetic writer, behind one import.

Interface as agreed, with these precisions: gt_boxes / predictions are x, y, z, w, l, h,
yaw, vx, vy with z the box's geometric centre (BEVDepth's own layout is l, w, h); the
batch's `depth_labels` is present only when params.return_depth; metas also carry
scene_token, timestamp and cams; `resize_lim` is BEVDepth's absolute scale (see
nuscenes_dataset.py). Only key frames are loaded (no sweep axis).

- `write_synthetic_nuscenes(root, ...)` (nuscenes_synth.py): a real v1.0 database.
- `create_infos(root, version)` / `write_infos` / `load_infos` / `load_or_create_infos`
  (written into the root when it is writable, else into the cache: derived.py):
  BEVDepth's `scripts/gen_info.py` records (sample_token, timestamp, scene_token, cam_infos,
  lidar_infos, cam_sweeps, lidar_sweeps, ann_infos), made through nuscenes-devkit from any
  nuScenes root, real or synthetic, split by the devkit's own scene lists. Each info also
  names its previous key frame (`prev_key_sample_token`, for the multi-key input). Three
  fields are added to each ann_info: `velocity_valid` (False where the devkit's box_velocity is
  NaN; `velocity` is then zeros as in BEVDepth), `attribute_names` and, per info,
  `scene_name` -- so the metric can rebuild the devkit's GT from infos alone.
  Sweeps take each sweep's own ego pose and calibration (gen_info.py reuses the key
  frame's, which is a bug there).
- `NuScenesDetDataset`, `NuScenesDataParams`, `collate_nuscenes` (nuscenes_dataset.py).

nuscenes-devkit is optional (extra `bevdepth`): it is imported inside the functions that
need it. Malformed data raises DatasetError naming the file and the field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DatasetError, MissingExtra, UsageError
from workloads.datasets.derived import derived_folder, write_pickle
from workloads.datasets.nuscenes_dataset import (  # noqa: F401  (re-exported interface)
    BEVDEPTH_CAMS,
    CLASSES,
    NuScenesDataParams,
    NuScenesDetDataset,
    collate_nuscenes,
    load_infos,
)
from workloads.datasets.nuscenes_synth import write_synthetic_nuscenes  # noqa: F401

MISSING_DEVKIT = "workload bevdepth needs nuscenes-devkit: pip install 'perception-harness[bevdepth]'"
# version -> ((devkit split, info file stem), ...)
SPLITS = {
    "v1.0-mini": (("mini_train", "train"), ("mini_val", "val")),
    "v1.0-trainval": (("train", "train"), ("val", "val")),
    "v1.0-test": (("test", "test"),),
}
# The fields each table must have for the devkit and for the infos.
TABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "category": ("token", "name"),
    "attribute": ("token", "name"),
    "visibility": ("token", "level"),
    "instance": ("token", "category_token"),
    "sensor": ("token", "channel", "modality"),
    "calibrated_sensor": ("token", "sensor_token", "translation", "rotation", "camera_intrinsic"),
    "ego_pose": ("token", "translation", "rotation", "timestamp"),
    "log": ("token",),
    "scene": ("token", "name", "first_sample_token"),
    "sample": ("token", "timestamp", "scene_token", "next"),
    "sample_data": ("token", "sample_token", "ego_pose_token", "calibrated_sensor_token", "timestamp",
                    "filename", "is_key_frame", "height", "width", "prev"),
    "sample_annotation": ("token", "sample_token", "instance_token", "attribute_tokens", "translation",
                          "size", "rotation", "num_lidar_pts", "num_radar_pts", "prev", "next"),
    "map": ("token", "log_tokens", "filename"),
}
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")


def require_devkit() -> Any:
    try:
        import nuscenes  # noqa: F401
        from nuscenes.nuscenes import NuScenes
    except ImportError as e:
        raise MissingExtra(MISSING_DEVKIT) from e
    return NuScenes


def open_nuscenes(root: Path, version: str) -> Any:
    """`NuScenes(version, root)`, with DatasetError naming the file and field on bad data."""
    NuScenes = require_devkit()
    table_dir = Path(root) / version
    for name in TABLE_FIELDS:
        if not (table_dir / f"{name}.json").is_file():
            raise DatasetError(f"{table_dir / (name + '.json')}: missing table file (table '{name}')")
    for rec in _read_table(table_dir, "map"):
        if not (Path(root) / str(rec.get("filename", ""))).is_file():
            raise DatasetError(f"{Path(root) / str(rec.get('filename'))}: map mask missing "
                               f"(field 'filename' of map {rec.get('token')} in {table_dir / 'map.json'})")
    try:
        nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    except (KeyError, AssertionError, ValueError, TypeError, IndexError) as e:
        for name in TABLE_FIELDS:  # find the culprit; the devkit's message does not name it
            _check_fields(table_dir, name, _read_table(table_dir, name))
        raise DatasetError(f"{table_dir}: nuscenes-devkit cannot load it: {e!r}") from e
    for name in TABLE_FIELDS:  # fields the devkit's reverse index does not touch
        _check_fields(table_dir, name, getattr(nusc, name))
    return nusc


def _read_table(table_dir: Path, name: str) -> list[dict]:
    path = table_dir / f"{name}.json"
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable table '{name}': {e}") from e
    if not isinstance(rows, list):
        raise DatasetError(f"{path}: table '{name}' must be a JSON list of records")
    return rows


def _check_fields(table_dir: Path, name: str, rows: list[dict]) -> None:
    fields = TABLE_FIELDS[name]
    for i, rec in enumerate(rows):
        missing = [f for f in fields if f not in rec]
        if missing:
            raise DatasetError(f"{table_dir / (name + '.json')}: record {i} (token {rec.get('token')}) "
                               f"has no field '{missing[0]}'")


def create_infos(root: Path, version: str, *, max_cam_sweeps: int = 6,
                 max_lidar_sweeps: int = 10) -> dict[str, list[dict]]:
    """BEVDepth info records per split ('train'/'val', or 'test'), in scene/sample order."""
    if version not in SPLITS:
        raise UsageError(f"unknown nuScenes version {version!r} (known: {', '.join(SPLITS)})")
    nusc = open_nuscenes(Path(root), version)
    from nuscenes.utils.splits import create_splits_scenes
    scenes = create_splits_scenes()
    attr_names = {a["token"]: a["name"] for a in nusc.attribute}
    out = {}
    for split, stem in SPLITS[version]:
        wanted = set(scenes[split])
        out[stem] = [_sample_info(nusc, sample, scene["name"], attr_names, max_cam_sweeps, max_lidar_sweeps)
                     for scene in nusc.scene if scene["name"] in wanted
                     for sample in _scene_samples(nusc, scene)]
    return out


def _scene_samples(nusc: Any, scene: dict) -> list[dict]:
    samples, token = [], scene["first_sample_token"]
    while token:
        sample = nusc.get("sample", token)
        samples.append(sample)
        token = sample["next"]
    return samples


def _sd_info(nusc: Any, sd: dict, camera: bool) -> dict:
    info = dict(sample_token=sd["sample_token"], ego_pose=nusc.get("ego_pose", sd["ego_pose_token"]),
                timestamp=sd["timestamp"], is_key_frame=sd["is_key_frame"], filename=sd["filename"],
                calibrated_sensor=nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
    if camera:
        info.update(height=sd["height"], width=sd["width"])
    return info


def _sweeps(nusc: Any, sample: dict, channels: tuple[str, ...], count: int, camera: bool) -> list[dict]:
    """Non-key sample_data before each key frame, newest first, while they belong to it."""
    sweeps: list[dict] = [{} for _ in range(count)]
    for ch in channels:
        sd = nusc.get("sample_data", sample["data"][ch])
        for j in range(count):
            if not sd["prev"]:
                break
            sd = nusc.get("sample_data", sd["prev"])
            if sd["sample_token"] != sample["token"]:
                break
            sweeps[j][ch] = _sd_info(nusc, sd, camera)
    return sweeps[:next((i for i, s in enumerate(sweeps) if not s), count)]


def _sample_info(nusc: Any, sample: dict, scene_name: str, attr_names: dict, max_cam_sweeps: int,
                 max_lidar_sweeps: int) -> dict:
    for ch in (*CAMERAS, "LIDAR_TOP"):
        if ch not in sample["data"]:
            raise DatasetError(f"{nusc.table_root}/sample_data.json: sample {sample['token']} has no "
                               f"key-frame sample_data for channel '{ch}'")
    # prev_key_sample_token: the previous key frame (multi-key input), "" at a scene start.
    info = dict(sample_token=sample["token"], timestamp=sample["timestamp"], scene_token=sample["scene_token"],
                scene_name=scene_name, prev_key_sample_token=sample["prev"])
    info["cam_infos"] = {c: _sd_info(nusc, nusc.get("sample_data", sample["data"][c]), True) for c in CAMERAS}
    info["lidar_infos"] = {"LIDAR_TOP": _sd_info(nusc, nusc.get("sample_data", sample["data"]["LIDAR_TOP"]),
                                                 False)}
    info["cam_sweeps"] = _sweeps(nusc, sample, CAMERAS, max_cam_sweeps, True)
    info["lidar_sweeps"] = _sweeps(nusc, sample, ("LIDAR_TOP",), max_lidar_sweeps, False)
    anns = []
    for token in sample["anns"]:
        ann = dict(nusc.get("sample_annotation", token))  # a copy: never mutate the devkit's table
        velocity = nusc.box_velocity(token)
        ann["velocity_valid"] = bool(np.all(np.isfinite(velocity)))
        ann["velocity"] = velocity if ann["velocity_valid"] else np.zeros(3)
        ann["attribute_names"] = [attr_names[t] for t in ann["attribute_tokens"]]
        anns.append(ann)
    info["ann_infos"] = anns
    return info


def write_infos(root: Path, version: str, out_dir: Path | None = None) -> dict[str, Path]:
    """Pickle `nuscenes_infos_<split>.pkl` into out_dir (default root), atomically, and return
    their paths."""
    paths = {}
    for stem, infos in create_infos(root, version).items():
        path = Path(out_dir if out_dir is not None else root) / f"nuscenes_infos_{stem}.pkl"
        write_pickle(path, infos)
        paths[stem] = path
    return paths


def info_files(root: Path, version: str, cache_dir: Path | None = None,
               prefix: str = "nuscenes_infos") -> tuple[dict[str, Path], bool]:
    """({split: `<prefix>_<split>.pkl` path}, present): where the infos of root are, or are to
    be written when present is False (derived.py: the root if it has them or is writable, else
    the cache). For other info kinds, another prefix (StreamPETR's: "streampetr_infos")."""
    stems = [stem for _, stem in SPLITS.get(version, ())]
    if not stems:  # an unknown version: create_infos names it
        return {}, False
    names = [f"{prefix}_{s}.pkl" for s in stems]
    tables = Path(root) / version
    folder, present = derived_folder(root, names, cache_dir,
                                     stamp=[tables / f"{t}.json" for t in ("sample", "sample_data",
                                                                           "sample_annotation")])
    return {s: folder / n for s, n in zip(stems, names)}, present


def load_or_create_infos(root: Path, version: str, cache_dir: Path | None = None) -> dict[str, list[dict]]:
    """The split infos of a root, written first if any pickle is missing: into the root when
    it is writable, else into the cache (`cache_dir`, default $HARNESS_CACHE), so a read-only
    dataset mount works."""
    paths, present = info_files(root, version, cache_dir)
    if not paths or not present:
        out_dir = next(iter(paths.values())).parent if paths else None
        paths = write_infos(root, version, out_dir)
    return {s: load_infos(p) for s, p in paths.items()}
