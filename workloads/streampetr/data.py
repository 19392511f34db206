"""StreamPETR's per-frame pipeline over its temporal infos (workloads/datasets/nuscenes_streampetr.py).

Per key frame: the cameras' images with `ResizeCropFlipRotImage` (one draw per frame for all
cameras; train: resize in `resize_lim`, bottom crop, random x crop, random flip; eval: the
centred crop at max(fH/H, fW/W)), intrinsics moved by the 3x3 image-augmentation matrix,
lidar2img recomputed, the 2D targets moved and clipped likewise; in training
`GlobalRotScaleTransImage` (BEV rotation and scale; boxes and velocities follow, lidar2img
and ego_pose are right-multiplied by the inverse transform, ego_pose_inv left-multiplied).

`resize_lim` is RELATIVE to the eval scale: the published (0.38, 0.55) is for 1600x900 ->
256x704 whose eval scale is 0.44, so (0.38 / 0.44, 0.55 / 0.44) x the eval scale of
whatever source size the data has (synthetic sizes too).

Sequences: infos are in scene order (the converter writes them so); with `seq_split_num`
k each scene's frames are cut into k contiguous parts (StreamPETR's `_set_group_flag`:
chunks of ceil(n / k)); `sequence_ids[i]` names the part of frame i. Timestamps stay
float64 on the host (metas); the workload turns them into time differences.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from harness.errors import DatasetError
from workloads.datasets.nuscenes_dataset import CLASSES
from workloads.datasets.nuscenes_geometry import matrix_to_quat
from workloads.datasets.nuscenes_streampetr import STREAMPETR_CAMS

PUBLISHED_EVAL_SCALE = 0.44  # 1600x900 -> 256x704
_FIELDS = ("token", "scene_token", "frame_idx", "timestamp", "lidar2global", "cams", "gt_boxes",
           "gt_velocity", "gt_labels", "valid_flag")


@dataclasses.dataclass(frozen=True)
class StreamDataParams:
    final_dim: tuple[int, int] = (256, 704)
    resize_lim: tuple[float, float] = (0.38 / PUBLISHED_EVAL_SCALE, 0.55 / PUBLISHED_EVAL_SCALE)
    bot_pct_lim: tuple[float, float] = (0.0, 0.0)
    rand_flip: bool = True
    rot_range: tuple[float, float] = (-0.3925, 0.3925)  # GlobalRotScaleTransImage, radians
    scale_ratio_range: tuple[float, float] = (0.95, 1.05)
    cams: tuple[str, ...] = STREAMPETR_CAMS
    classes: tuple[str, ...] = CLASSES
    seq_split_num: int = 2
    # Training GT kept inside this BEV box (x_min, y_min, x_max, y_max), StreamPETR's
    # ObjectRangeFilter over pc_range: a centre outside pc_range cannot be predicted (the
    # head's centres are a sigmoid over pc_range), so it would only add an unreachable
    # L1 target and pull matched queries to the border. None: keep every box.
    gt_bev_range: tuple[float, float, float, float] | None = None
    img_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    img_std: tuple[float, float, float] = (58.395, 57.12, 57.375)


def sequence_ids(infos: Sequence[dict], split_num: int) -> np.ndarray:
    """Sub-sequence id per info: each scene's run of frames cut into `split_num` parts."""
    ids, current, i = np.zeros(len(infos), np.int64), 0, 0
    while i < len(infos):
        j = i
        while j < len(infos) and infos[j]["scene_token"] == infos[i]["scene_token"]:
            j += 1
        chunk = math.ceil((j - i) / split_num)
        for start in range(i, j, chunk):
            ids[start:min(start + chunk, j)] = current
            current += 1
        i = j
    return ids


class StreamPETRDataset(torch.utils.data.Dataset):
    def __init__(self, infos: Sequence[dict], root: Path | str, params: StreamDataParams, *, train: bool,
                 source: str = "<infos>") -> None:
        for i, info in enumerate(infos):
            missing = [f for f in _FIELDS if f not in info]
            if missing:
                raise DatasetError(f"{source}: info {i} (sample {info.get('sample_token')}) has no field "
                                   f"'{missing[0]}' (not a StreamPETR info; rebuild the streampetr_infos pkl)")
            for cam in params.cams:
                if cam not in info["cams"]:
                    raise DatasetError(f"{source}: info {i} has no field 'cams.{cam}'")
        self.infos, self.root, self.params, self.train = list(infos), Path(root), params, train
        self.sequence_ids = sequence_ids(self.infos, params.seq_split_num if train else 1)

    def __len__(self) -> int:
        return len(self.infos)

    def _ida(self, rng: np.random.Generator, w: int, h: int) -> tuple[tuple[int, int], tuple, bool, np.ndarray]:
        p = self.params
        fh, fw = p.final_dim
        base = max(fh / h, fw / w)
        if self.train:
            resize = rng.uniform(*p.resize_lim) * base
            new_w, new_h = int(w * resize), int(h * resize)
            crop_h = int((1 - rng.uniform(*p.bot_pct_lim)) * new_h) - fh
            crop_w = int(rng.uniform(0, max(0, new_w - fw)))
            flip = bool(p.rand_flip and rng.integers(2))
        else:
            resize = base
            new_w, new_h = int(w * resize), int(h * resize)
            crop_h = int((1 - np.mean(p.bot_pct_lim)) * new_h) - fh
            crop_w = int(max(0, new_w - fw) / 2)
            flip = False
        mat = np.eye(3)
        mat[:2, :2] *= resize
        mat[:2, 2] -= [crop_w, crop_h]
        if flip:
            mat = np.array([[-1.0, 0, fw], [0, 1, 0], [0, 0, 1]]) @ mat
        return (new_w, new_h), (crop_w, crop_h, crop_w + fw, crop_h + fh), flip, mat

    def _image(self, path: Path, idx: int, cam: str) -> Image.Image:
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read image (field 'cams.{cam}.data_path' of info {idx}): {e}") from e

    def __getitem__(self, idx: int) -> dict[str, Any]:
        p, info = self.params, self.infos[idx]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        fh, fw = p.final_dim
        n = len(p.cams)
        mean, std = np.asarray(p.img_mean, np.float32), np.asarray(p.img_std, np.float32)
        imgs = np.empty((n, 3, fh, fw), np.float32)
        intrinsics, lidar2cam = np.zeros((2, n, 4, 4))
        boxes2d, labels2d, centers2d, depths2d = [], [], [], []
        draw = None
        for i, cam in enumerate(p.cams):
            ci = info["cams"][cam]
            img = self._image(self.root / ci["data_path"], idx, cam)
            if draw is None:  # one draw per frame, shared by the cameras (as the original)
                draw = self._ida(rng, *img.size)
            dims, crop, flip, mat = draw
            img = img.resize(dims).crop(crop)
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            imgs[i] = ((np.asarray(img, np.float32) - mean) / std).transpose(2, 0, 1)
            intrinsics[i] = np.eye(4)
            intrinsics[i, :3, :3] = mat @ np.asarray(ci["cam_intrinsic"], np.float64)
            lidar2cam[i] = np.linalg.inv(np.asarray(ci["cam2lidar"], np.float64))
            b = np.asarray(ci["bboxes2d"], np.float64).reshape(-1, 4)
            corners = np.stack([b[:, [0, 1]], b[:, [2, 3]]], 1) @ mat[:2, :2].T + mat[:2, 2]
            b = np.concatenate([corners.min(1), corners.max(1)], 1)
            b[:, [0, 2]], b[:, [1, 3]] = b[:, [0, 2]].clip(0, fw), b[:, [1, 3]].clip(0, fh)
            c = np.asarray(ci["centers2d"], np.float64).reshape(-1, 2) @ mat[:2, :2].T + mat[:2, 2]
            keep = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)
            keep &= (c[:, 0] >= 0) & (c[:, 0] < fw) & (c[:, 1] >= 0) & (c[:, 1] < fh)
            boxes2d.append(torch.from_numpy(b[keep].astype(np.float32)))
            labels2d.append(torch.from_numpy(np.asarray(ci["labels2d"], np.int64)[keep]))
            centers2d.append(torch.from_numpy(c[keep].astype(np.float32)))
            depths2d.append(torch.from_numpy(np.asarray(ci["depths"], np.float32)[keep]))
        lidar2img = intrinsics @ lidar2cam
        ego_pose = np.asarray(info["lidar2global"], np.float64)
        boxes, labels = self._gt(info)
        if self.train and p.gt_bev_range is not None:  # before the BEV augmentation, as the original
            x0, y0, x1, y1 = p.gt_bev_range
            inside = (boxes[:, 0] > x0) & (boxes[:, 1] > y0) & (boxes[:, 0] < x1) & (boxes[:, 1] < y1)
            boxes, labels = boxes[inside], labels[inside]
        bev = np.eye(4)
        if self.train:  # GlobalRotScaleTransImage
            angle, scale = rng.uniform(*p.rot_range), rng.uniform(*p.scale_ratio_range)
            cos, sin = np.cos(angle), np.sin(angle)
            bev[:3, :3] = scale * np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])
            boxes[:, :3] = boxes[:, :3] @ bev[:3, :3].T
            boxes[:, 3:6] *= scale
            boxes[:, 6] += angle
            boxes[:, 7:9] = boxes[:, 7:9] @ bev[:2, :2].T
        bev_inv = np.linalg.inv(bev)
        ego_pose = ego_pose @ bev_inv
        lidar2img = lidar2img @ bev_inv

        def f32(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        l2g = np.asarray(info["lidar2global"], np.float64)
        return dict(
            imgs=torch.from_numpy(imgs), intrinsics=f32(intrinsics), lidar2img=f32(lidar2img),
            img2lidar=f32(np.linalg.inv(lidar2img)),
            ego_pose=f32(ego_pose), ego_pose_inv=f32(np.linalg.inv(ego_pose)),
            gt_boxes=f32(boxes), gt_labels=torch.from_numpy(labels), gt_bboxes2d=boxes2d, gt_labels2d=labels2d,
            centers2d=centers2d, depths2d=depths2d,
            metas=dict(sample_token=info["token"], scene_token=info["scene_token"],
                       sequence_id=int(self.sequence_ids[idx]), frame_idx=int(info["frame_idx"]),
                       timestamp=float(info["timestamp"]) / 1e6,  # float64 seconds, host only
                       ego2global_rotation=matrix_to_quat(l2g[:3, :3]), ego2global_translation=l2g[:3, 3]))

    def _gt(self, info: dict) -> tuple[np.ndarray, np.ndarray]:
        """(M, 9) x, y, z, w, l, h, yaw, vx, vy in the LIDAR frame: valid boxes of the classes."""
        labels = np.asarray(info["gt_labels"], np.int64)
        keep = (labels >= 0) & np.asarray(info["valid_flag"], bool)
        boxes = np.concatenate([np.asarray(info["gt_boxes"], np.float64).reshape(-1, 7),
                                np.asarray(info["gt_velocity"], np.float64).reshape(-1, 2)], 1)
        return boxes[keep], labels[keep]


def collate_stream(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {k: torch.stack([s[k] for s in samples]) for k in (
        "imgs", "intrinsics", "lidar2img", "img2lidar", "ego_pose", "ego_pose_inv")}
    for k in ("gt_boxes", "gt_labels", "metas"):
        batch[k] = [s[k] for s in samples]
    for k in ("gt_bboxes2d", "gt_labels2d", "centers2d", "depths2d"):  # flat over (sample, camera)
        batch[k] = [t for s in samples for t in s[k]]
    return batch
