"""BEVDepth's key-frame data pipeline over nuScenes info records (no devkit needed).

Per sample: the 6 camera images with BEVDepth's image-data augmentation (IDA: resize,
crop, flip, rotate; a 4x4 `ida_mat` maps original pixels to augmented ones), camera
calibration as 4x4 matrices, GT boxes in the key ego frame with BEV-data augmentation
(BDA: rotate, scale, flip; `bda_mat`), and LIDAR depth labels projected through the
same calibration and `ida_mat`. Both augmentations are off for eval.

Box layout (gt_boxes and predictions): x, y, z, w, l, h, yaw, vx, vy in the key ego frame;
z is the box's GEOMETRIC CENTRE (as BEVDepth's get_gt, which keeps nuScenes's centre; not
mmdet3d's bottom centre); w, l, h is nuScenes's size order (BEVDepth stores l, w, h); yaw
is the heading of the length axis, CCW from ego x; velocity is in ego axes (m/s).

`resize_lim` is BEVDepth's: absolute scale factors applied to the source image (its
(0.386, 0.55) is for 1600x900 -> 256x704, i.e. (0.877, 1.25) x the eval scale
max(fH/H, fW/W)); for another source size scale it the same way. A range far from the
eval scale (outside 0.5..2 x) is refused, since it would train on mostly-black crops.
Deviations from BEVDepth, all deliberate: depth labels keep the nearest point per pixel
and floor coordinates (BEVDepth keeps the last and truncates toward zero); images are
normalised as RGB unless `swap_rb` (BEVDepth's PIL image + mmcv to_rgb=True ends up BGR);
GT is returned in eval too.
Only key frames: BEVDepth's "2key" (key_idxes=[-1]) would add the previous sample of the
same scene as a second frame: a sweep axis on imgs/mats, its sensor2ego taken to the
current key ego through global, sensor2sensor = (key sensor -> that frame's sensor), and
its own depth labels are not needed (BEVDepth supervises depth on the key frame only).
"""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from harness.errors import DatasetError, UsageError
from workloads.datasets.checks import check_finite, check_not_empty
from workloads.datasets.nuscenes_geometry import (
    key_ego_pose,
    matrix_yaw,
    quat_to_matrix,
    record_matrix,
    transform_points,
)

CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
           "pedestrian", "traffic_cone")
BEVDEPTH_CAMS = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
# nuScenes category -> detection class (the devkit's category_to_detection_name).
DETECTION_NAME = {
    "movable_object.barrier": "barrier", "vehicle.bicycle": "bicycle", "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus", "vehicle.car": "car", "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle", "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian", "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian", "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer", "vehicle.truck": "truck",
}
_CAM_FIELDS = ("filename", "calibrated_sensor.translation", "calibrated_sensor.rotation",
               "calibrated_sensor.camera_intrinsic", "ego_pose.translation", "ego_pose.rotation")
_LIDAR_FIELDS = ("filename", "calibrated_sensor.translation", "calibrated_sensor.rotation",
                 "ego_pose.translation", "ego_pose.rotation")
# Annotation numbers that must be finite. Not velocity: NaN is the devkit's "unknown" there
# (infos written by BEVDepth's own gen_info keep it; ours store zeros).
ANN_NUMBERS = ("ann_infos[].translation", "ann_infos[].size", "ann_infos[].rotation")
_ANN_FIELDS = ("translation", "size", "rotation", "velocity", "category_name", "num_lidar_pts", "num_radar_pts")


@dataclasses.dataclass(frozen=True)
class NuScenesDataParams:
    """Augmentation and output settings; defaults are BEVDepth's published nuScenes config."""

    final_dim: tuple[int, int] = (256, 704)  # (H, W) of the network input
    resize_lim: tuple[float, float] = (0.386, 0.55)  # absolute, for the source size (module doc)
    bot_pct_lim: tuple[float, float] = (0.0, 0.0)
    rot_lim: tuple[float, float] = (-5.4, 5.4)  # degrees
    rand_flip: bool = True
    bda_rot_lim: tuple[float, float] = (-22.5, 22.5)  # degrees
    bda_scale_lim: tuple[float, float] = (0.95, 1.05)
    bda_flip_dx_ratio: float = 0.5
    bda_flip_dy_ratio: float = 0.5
    classes: tuple[str, ...] = CLASSES
    cams: tuple[str, ...] = BEVDEPTH_CAMS
    return_depth: bool = True
    img_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    img_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    swap_rb: bool = False


def load_infos(path: Path | str) -> list[dict]:
    """A pickled info list, with DatasetError naming the file when it is not one."""
    try:
        with open(path, "rb") as f:
            infos = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise DatasetError(f"{path}: cannot read nuScenes infos: {e}") from e
    if not isinstance(infos, list) or not all(isinstance(i, dict) for i in infos):
        raise DatasetError(f"{path}: nuScenes infos must be a list of dicts")
    check_not_empty(infos, str(path), "samples")
    check_finite(((f"info {i} (sample {info.get('sample_token')})", info)
                  for i, info in enumerate(infos)), ANN_NUMBERS, str(path))
    return infos


def _field(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(part)
        obj = obj[part]
    return obj


def validate_infos(infos: Sequence[dict], source: str, cams: Sequence[str], lidar: bool) -> None:
    """Raise DatasetError naming the source file, the record and the first missing field."""
    checks = ["sample_token", "scene_token", "timestamp", "ann_infos"]
    checks += [f"cam_infos.{c}.{f}" for c in cams for f in _CAM_FIELDS]
    checks += [f"lidar_infos.LIDAR_TOP.{f}" for f in _LIDAR_FIELDS] if lidar else []
    for i, info in enumerate(infos):
        for dotted in checks:
            try:
                _field(info, dotted)
            except KeyError:
                raise DatasetError(f"{source}: info {i} (sample {info.get('sample_token')}) has no field "
                                   f"'{dotted}'") from None
        for k, ann in enumerate(info["ann_infos"]):
            missing = [f for f in _ANN_FIELDS if f not in ann]
            if missing:
                raise DatasetError(f"{source}: info {i} (sample {info.get('sample_token')}) has no field "
                                   f"'ann_infos.{k}.{missing[0]}'")


def ego_frame_boxes(info: dict, cams: Sequence[str], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """BEVDepth's get_gt: annotations of the listed classes with any LIDAR/radar point, in
    the key ego frame, as (M, 9) x, y, z, w, l, h, yaw, vx, vy and (M,) class indices."""
    rot_q, trans = key_ego_pose(info["cam_infos"], cams)
    r_inv = quat_to_matrix(rot_q).T
    boxes, labels = [], []
    for ann in info["ann_infos"]:
        name = DETECTION_NAME.get(ann["category_name"])
        if name not in classes or ann["num_lidar_pts"] + ann["num_radar_pts"] <= 0:
            continue
        center = r_inv @ (np.asarray(ann["translation"], dtype=np.float64) - trans)
        yaw = matrix_yaw(r_inv @ quat_to_matrix(ann["rotation"]))
        vel = r_inv @ np.asarray(ann["velocity"], dtype=np.float64)
        boxes.append([*center, *ann["size"], yaw, vel[0], vel[1]])
        labels.append(classes.index(name))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 9), np.asarray(labels, dtype=np.int64)


class NuScenesDetDataset(torch.utils.data.Dataset):
    """One key sample per item: a dict of tensors; batch them with `collate_nuscenes`."""

    def __init__(self, infos: Sequence[dict] | Path | str, data_root: Path | str,
                 params: NuScenesDataParams = NuScenesDataParams(), *, train: bool = False):
        source = "<infos>"
        if isinstance(infos, (str, Path)):
            source, infos = str(infos), load_infos(infos)
        validate_infos(infos, source, params.cams, params.return_depth)
        self.infos, self.source = list(infos), source
        self.root, self.params, self.train = Path(data_root), params, train

    def __len__(self) -> int:
        return len(self.infos)

    def _rng(self) -> np.random.Generator:
        # Drawn from torch's RNG: seeded by the harness, and distinct per DataLoader worker.
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def _ida(self, rng: np.random.Generator, w: int, h: int) -> tuple[float, tuple, tuple, bool, float]:
        p = self.params
        fh, fw = p.final_dim
        base = max(fh / h, fw / w)
        if self.train:
            lo, hi = p.resize_lim
            if not (0.5 * base <= lo <= hi <= 2.0 * base):
                raise UsageError(
                    f"resize_lim {p.resize_lim} does not suit {w}x{h} images cropped to {fw}x{fh}: the "
                    f"eval scale is {base:.4f}; BEVDepth's range is ({0.386 / 0.44 * base:.4f}, "
                    f"{0.55 / 0.44 * base:.4f}) for this size")
            resize = rng.uniform(lo, hi)
            new_w, new_h = int(w * resize), int(h * resize)
            crop_h = int((1 - rng.uniform(*p.bot_pct_lim)) * new_h) - fh
            crop_w = int(rng.uniform(0, max(0, new_w - fw)))
            flip = bool(p.rand_flip and rng.integers(2))
            rotate = float(rng.uniform(*p.rot_lim))
        else:
            resize = base
            new_w, new_h = int(w * resize), int(h * resize)
            crop_h = int((1 - np.mean(p.bot_pct_lim)) * new_h) - fh
            crop_w = int(max(0, new_w - fw) / 2)
            flip, rotate = False, 0.0
        return resize, (new_w, new_h), (crop_w, crop_h, crop_w + fw, crop_h + fh), flip, rotate

    @staticmethod
    def _ida_mat(resize: float, crop: tuple, flip: bool, rotate: float) -> np.ndarray:
        """Original pixel -> augmented pixel, in BEVDepth's order: scale, crop, flip, rotate."""
        a = np.eye(3)
        a[:2, :2] *= resize
        a[:2, 2] -= crop[:2]
        cw, ch = crop[2] - crop[0], crop[3] - crop[1]
        if flip:
            a = np.array([[-1.0, 0, cw], [0, 1, 0], [0, 0, 1]]) @ a
        t = np.deg2rad(rotate)  # PIL rotates counter-clockwise on screen (y points down)
        r = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
        centre = np.array([cw / 2, ch / 2])
        m = np.eye(4)
        m[:2, :2] = r @ a[:2, :2]
        m[:2, 3] = r @ (a[:2, 2] - centre) + centre
        return m

    def _image(self, path: Path, idx: int, cam: str) -> Image.Image:
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read image (field 'cam_infos.{cam}.filename' of info {idx} "
                               f"in {self.source}): {e}") from e

    def _lidar(self, idx: int) -> np.ndarray:
        path = self.root / self.infos[idx]["lidar_infos"]["LIDAR_TOP"]["filename"]
        try:
            raw = np.fromfile(path, dtype=np.float32)
        except OSError as e:
            raise DatasetError(f"{path}: cannot read LIDAR points (field 'lidar_infos.LIDAR_TOP.filename' "
                               f"of info {idx} in {self.source}): {e}") from e
        if raw.size % 5:
            raise DatasetError(f"{path}: LIDAR file is not N x 5 float32 (x, y, z, intensity, ring)")
        return raw.reshape(-1, 5)[:, :3].astype(np.float64)

    def _depth(self, pts_lidar: np.ndarray, info: dict, cam: str, w: int, h: int, ida: np.ndarray
               ) -> np.ndarray:
        """LIDAR points -> global -> camera, projected, then moved by the image augmentation."""
        lid, ci = info["lidar_infos"]["LIDAR_TOP"], info["cam_infos"][cam]
        m = (_rigid_inverse(record_matrix(ci["calibrated_sensor"])) @ _rigid_inverse(record_matrix(ci["ego_pose"]))
             @ record_matrix(lid["ego_pose"]) @ record_matrix(lid["calibrated_sensor"]))
        pts = transform_points(m, pts_lidar)
        depth = pts[:, 2]
        uvw = pts @ np.asarray(ci["calibrated_sensor"]["camera_intrinsic"], dtype=np.float64).T
        uv = uvw[:, :2] / np.maximum(depth, 1e-6)[:, None]
        keep = (depth > 0) & (uv[:, 0] > 1) & (uv[:, 0] < w - 1) & (uv[:, 1] > 1) & (uv[:, 1] < h - 1)
        uv, depth = uv[keep] @ ida[:2, :2].T + ida[:2, 3], depth[keep]
        fh, fw = self.params.final_dim
        col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = (col >= 0) & (col < fw) & (row >= 0) & (row < fh)
        order = np.argsort(-depth[inside])  # far first, so the nearest point per pixel wins
        out = np.zeros((fh, fw), dtype=np.float32)
        out[row[inside][order], col[inside][order]] = depth[inside][order]
        return out

    def camera_image(self, idx: int, info: dict, cam: str, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """One camera, augmented and normalised: (3, fH, fW) image, 4x4 ida, source (w, h).
        One ida draw from `rng` per call (per camera, as BEVDepth)."""
        p = self.params
        img = self._image(self.root / info["cam_infos"][cam]["filename"], idx, cam)
        w, h = img.size
        resize, dims, crop, flip, rotate = self._ida(rng, w, h)
        ida = self._ida_mat(resize, crop, flip, rotate)
        img = img.resize(dims).crop(crop)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = img.rotate(rotate)
        arr = np.asarray(img, dtype=np.float32)
        arr = arr[..., ::-1] if p.swap_rb else arr
        mean, std = np.asarray(p.img_mean, np.float32), np.asarray(p.img_std, np.float32)
        return ((arr - mean) / std).transpose(2, 0, 1), ida, (w, h)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        # numpy throughout, one conversion at the end: small torch ops are slow when the
        # intra-op pool competes for busy cores.
        p, info = self.params, self.infos[idx]
        rng = self._rng()
        pts = self._lidar(idx) if p.return_depth else None
        n = len(p.cams)
        fh, fw = p.final_dim
        imgs = np.empty((n, 3, fh, fw), np.float32)
        s2e, intrins, idas = np.zeros((3, n, 4, 4))
        depths = np.zeros((n, fh, fw), np.float32)
        for i, cam in enumerate(p.cams):
            ci = info["cam_infos"][cam]
            imgs[i], idas[i], (w, h) = self.camera_image(idx, info, cam, rng)
            # Key frame: the camera's ego is the key ego, so sensor2ego is its calibration.
            s2e[i] = record_matrix(ci["calibrated_sensor"])
            intrins[i] = np.eye(4)
            intrins[i, :3, :3] = ci["calibrated_sensor"]["camera_intrinsic"]
            if pts is not None:
                depths[i] = self._depth(pts, info, cam, w, h, idas[i])
        boxes, labels = ego_frame_boxes(info, p.cams, p.classes)
        boxes, bda = self._bda(rng, boxes)
        rot_q, trans = key_ego_pose(info["cam_infos"], p.cams)

        def f32(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        out = dict(imgs=torch.from_numpy(imgs), sensor2ego_mats=f32(s2e), intrin_mats=f32(intrins),
                   ida_mats=f32(idas), sensor2sensor_mats=f32(np.broadcast_to(np.eye(4), (n, 4, 4))),
                   bda_mat=f32(bda), gt_boxes=f32(boxes), gt_labels=torch.from_numpy(labels),
                   metas=dict(sample_token=info["sample_token"], scene_token=info["scene_token"],
                              timestamp=info["timestamp"], ego2global_translation=trans,
                              ego2global_rotation=rot_q, cams=list(p.cams)))
        if pts is not None:
            out["depth_labels"] = torch.from_numpy(depths)
        return out

    def _bda(self, rng: np.random.Generator, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BEVDepth's bev_transform: rotate, scale, flip the BEV; boxes follow, velocity too."""
        p = self.params
        if self.train:
            angle = np.deg2rad(rng.uniform(*p.bda_rot_lim))
            scale = rng.uniform(*p.bda_scale_lim)
            flip_dx, flip_dy = rng.uniform() < p.bda_flip_dx_ratio, rng.uniform() < p.bda_flip_dy_ratio
        else:
            angle, scale, flip_dx, flip_dy = 0.0, 1.0, False, False
        c, s = np.cos(angle), np.sin(angle)
        rot = np.diag([-1.0 if flip_dx else 1.0, -1.0 if flip_dy else 1.0, 1.0]) @ (
            scale * np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]))
        boxes = boxes.copy()
        boxes[:, :3] = boxes[:, :3] @ rot.T
        boxes[:, 3:6] *= scale
        boxes[:, 6] += angle
        if flip_dx:
            boxes[:, 6] = np.pi - boxes[:, 6]
        if flip_dy:
            boxes[:, 6] = -boxes[:, 6]
        boxes[:, 7:] = boxes[:, 7:] @ rot[:2, :2].T
        bda = np.eye(4)
        bda[:3, :3] = rot
        return boxes, bda


def _rigid_inverse(m: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def collate_nuscenes(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the per-sample tensors; boxes, labels and metas stay lists (ragged)."""
    batch: dict[str, Any] = {k: torch.stack([s[k] for s in samples]) for k in (
        "imgs", "sensor2ego_mats", "intrin_mats", "ida_mats", "sensor2sensor_mats", "bda_mat")}
    if all("depth_labels" in s for s in samples):
        batch["depth_labels"] = torch.stack([s["depth_labels"] for s in samples])
    for k in ("gt_boxes", "gt_labels", "metas"):
        batch[k] = [s[k] for s in samples]
    return batch
