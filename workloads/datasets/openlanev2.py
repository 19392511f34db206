"""OpenLane-V2 subset_A reader: data_dict_subset_A.json, per-frame info JSON, ring images.

Ground truth goes through the devkit's own `collect()` (openlanev2.centerline.preprocessing),
as the official preprocessing does: point interval 1 for train (201 points per centerline)
and 20 for val (11 points, what the metric scores). Existing collection pickles in the root
(`data_dict_subset_A_{split}.pkl`) are used as they are. New ones are written to the cache,
never into the dataset root: `collect(root_path, ...)` writes `{root_path}/{name}.pkl`, so it is
given a folder in the cache whose split folders are symlinks into the root.

Each sample resizes every camera to the model's (H, W) from its own source size (the portrait
front view is stretched to landscape as the baseline's ResizeFrontView does), scales K by the
per-camera factors, builds lidar2img = K @ ego->camera (the info's extrinsic is camera->ego),
fits the train centerlines with the endpoint-fixed Bezier (5 control points) and scales the
traffic-element boxes into input pixels. Training adds a photometric distortion per view.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from harness import DatasetError
from workloads.datasets.openlanev2_checks import check_frame, check_frames

DATA_DICT = "data_dict_subset_A.json"
POINT_INTERVAL = {"train": 1, "val": 20, "test": 20}
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def read_data_dict(root: Path) -> dict[str, dict[str, list[str]]]:
    path = Path(root) / DATA_DICT
    if not path.is_file():
        raise DatasetError(f"{path}: missing (not an OpenLane-V2 subset_A root)")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not an OpenLane-V2 data dict (a JSON "
                           f"{type(data).__name__}, expected an object of splits)")
    for split in ("train", "val"):
        if not isinstance(data.get(split), dict) or not data[split]:
            raise DatasetError(f"{path}: field '{split}' has no segments")
        for seg, stamps in data[split].items():
            if not isinstance(stamps, list) or not all(isinstance(t, str) for t in stamps):
                raise DatasetError(f"{path}: field '{split}.{seg}' is not a list of frame "
                                   f"file names")
    return data


def _read_json(path: Path) -> Any:
    """A JSON file; DatasetError naming it when it is not JSON (truncated, not UTF-8)."""
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None


def collection_path(root: Path, split: str, cache_dir: Path, collect: Callable[..., None],
                    data_dict: dict[str, dict[str, list[str]]]) -> Path:
    """The devkit collection pkl of a split: the root's own, or one collected into the cache."""
    own = Path(root) / f"data_dict_subset_A_{split}.pkl"
    if own.is_file():
        return own
    root = Path(root).resolve()
    stamp = (root / DATA_DICT).stat().st_mtime_ns
    key = hashlib.sha1(f"{root}|{stamp}".encode()).hexdigest()[:12]
    view = Path(cache_dir) / "openlanev2-collections" / f"{root.name}-{key}"
    name = f"data_dict_subset_A_{split}"
    out = view / f"{name}.pkl"
    if out.is_file():
        return out
    view.mkdir(parents=True, exist_ok=True)
    link = view / split
    if not link.exists():
        os.symlink(root / split, link, target_is_directory=True)
    # collect() reads every info file and names none when one is broken: check them first.
    for seg, stamps in data_dict[split].items():
        for ts in stamps:
            info = root / split / seg / "info" / ts
            if not info.is_file():
                raise DatasetError(f"{root / DATA_DICT}: {split}/{seg}/{ts} listed but "
                                   f"{info} is missing")
            check_frame(_read_json(info), split, f"{info}:")
    collect(str(view), {split: data_dict[split]}, name, point_interval=POINT_INTERVAL[split])
    return out


def load_collection(path: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            frames = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as exc:
        raise DatasetError(f"{path}: not an OpenLane-V2 collection pickle ({exc})") from None
    if not isinstance(frames, dict) or not frames:
        raise DatasetError(f"{path}: not an OpenLane-V2 collection (a non-empty dict)")
    check_frames(frames, str(path))  # also a collection found in the root, not collected here
    return frames


def cameras_of(frame: dict[str, Any], where: str) -> tuple[str, ...]:
    sensor = frame.get("sensor")
    if not isinstance(sensor, dict) or not sensor:
        raise DatasetError(f"{where}: field 'sensor' is missing or empty")
    cams = tuple(sensor)
    if cams[0] != "ring_front_center":
        raise DatasetError(f"{where}: field 'sensor' must list ring_front_center first "
                           f"(got {cams[0]}); the traffic-element head reads the first view")
    return cams


def _photometric(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """BEVFormer's PhotoMetricDistortion, simplified to brightness, contrast, saturation."""
    if rng.random() < 0.5:
        img = img + float(rng.uniform(-32, 32))
    if rng.random() < 0.5:
        img = img * float(rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        grey = img.mean(0, keepdim=True)
        img = grey + (img - grey) * float(rng.uniform(0.5, 1.5))
    return img.clamp(0, 255)


class OpenLaneV2Dataset(torch.utils.data.Dataset):
    def __init__(self, frames: dict[tuple[str, str, str], dict[str, Any]], root: Path,
                 cameras: tuple[str, ...], input_size: tuple[int, int], pad_divisor: int,
                 num_control: int, train: bool, photometric: bool = False,
                 cache_images: bool = False) -> None:
        self.keys = sorted(frames)
        self.frames, self.root = frames, Path(root)
        self.cameras, self.input_size = cameras, tuple(input_size)
        self.pad_divisor, self.num_control = pad_divisor, num_control
        self.train, self.photometric = train, photometric and train
        # (index, camera) -> (resized uint8 CHW view, source (W, H)); per worker process
        self._cache: dict[tuple[int, str], tuple[torch.Tensor, tuple[int, int]]] | None = (
            {} if cache_images else None)

    def __len__(self) -> int:
        return len(self.keys)

    def _load(self, rel: str, key: tuple[str, str, str],
              cam: str) -> tuple[Image.Image, tuple[int, int]]:
        """The image (possibly decoded at a reduced JPEG scale) and its source (W, H)."""
        path = self.root / rel
        field = f"field 'sensor.{cam}.image_path' of frame {'/'.join(key)}"
        try:
            with Image.open(path) as img:
                size = img.size
                h, w = self.input_size
                img.draft("RGB", (w, h))  # JPEG DCT scaling: decode near the target size
                return img.convert("RGB"), size
        except FileNotFoundError:
            raise DatasetError(f"{path}: image missing ({field})") from None
        except UnidentifiedImageError:  # random bytes, another file type
            raise DatasetError(f"{path}: not an image ({field})") from None
        except (OSError, ValueError) as exc:  # truncated, unsupported mode
            raise DatasetError(f"{path}: cannot decode image ({field}): {exc}") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        from workloads.datasets.bezier import fit_bezier_endpoints_fixed

        key = self.keys[index]
        frame = self.frames[key]
        h, w = self.input_size
        ph = math.ceil(h / self.pad_divisor) * self.pad_divisor
        pw = math.ceil(w / self.pad_divisor) * self.pad_divisor
        rng = np.random.default_rng((index, torch.initial_seed() % 2**32))
        imgs = torch.zeros(len(self.cameras), 3, ph, pw)
        lidar2img = torch.zeros(len(self.cameras), 4, 4, dtype=torch.float64)
        front_scale = (1.0, 1.0)
        for i, cam in enumerate(self.cameras):
            meta = frame["sensor"].get(cam)
            if meta is None:
                raise DatasetError(f"frame {key}: field 'sensor.{cam}' is missing")
            cached = self._cache.get((index, cam)) if self._cache is not None else None
            if cached is None:
                img, src = self._load(meta["image_path"], key, cam)
                img = img.resize((w, h), Image.BILINEAR)
                cached = (torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), src)
                if self._cache is not None:
                    self._cache[(index, cam)] = cached
            x, (src_w, src_h) = cached[0].float(), cached[1]
            if self.photometric:
                x = _photometric(x, rng)
            imgs[i, :, :h, :w] = (x - MEAN) / STD
            sx, sy = w / src_w, h / src_h
            if i == 0:
                front_scale = (sx, sy)
            k = np.eye(4)
            k[:3, :3] = np.diag([sx, sy, 1.0]) @ np.asarray(meta["intrinsic"]["K"], np.float64)
            rot = np.asarray(meta["extrinsic"]["rotation"], np.float64)
            trans = np.asarray(meta["extrinsic"]["translation"], np.float64)
            ego2cam = np.eye(4)
            ego2cam[:3, :3], ego2cam[:3, 3] = rot.T, -rot.T @ trans
            lidar2img[i] = torch.from_numpy(k @ ego2cam)
        sample: dict[str, Any] = {"imgs": imgs, "lidar2img": lidar2img.float(),
                                  "front_valid_hw": torch.tensor([h, w]),
                                  "front_scale": torch.tensor(front_scale), "key": key}
        ann = frame.get("annotation")
        if self.train:
            if ann is None:
                raise DatasetError(f"frame {key}: field 'annotation' is missing (train split)")
            lanes = [np.asarray(lc["points"], np.float64) for lc in ann["lane_centerline"]]
            ctrl = [fit_bezier_endpoints_fixed(p, self.num_control).reshape(-1) for p in lanes]
            sample["gt_lc"] = torch.tensor(np.array(ctrl), dtype=torch.float32).view(
                len(ctrl), 3 * self.num_control)
            boxes = [np.asarray(te["points"], np.float64).reshape(4) for te in
                     ann["traffic_element"]]
            scale = np.array([front_scale[0], front_scale[1]] * 2)
            sample["gt_te"] = torch.tensor(np.array(boxes) * scale if boxes else
                                           np.zeros((0, 4)), dtype=torch.float32)
            sample["gt_te_labels"] = torch.tensor([int(te["attribute"]) for te in
                                                   ann["traffic_element"]], dtype=torch.long)
            n, m = len(lanes), len(boxes)
            sample["gt_lclc"] = torch.as_tensor(np.asarray(ann["topology_lclc"]).reshape(n, n))
            sample["gt_lcte"] = torch.as_tensor(np.asarray(ann["topology_lcte"]).reshape(n, m))
        return sample


def collate_openlanev2(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in samples[0]:
        values = [s[k] for s in samples]
        stack = k in ("imgs", "lidar2img", "front_valid_hw", "front_scale")
        out[k] = torch.stack(values) if stack else values
    return out
