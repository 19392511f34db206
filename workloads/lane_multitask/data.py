"""TuSimple frames as training/eval samples: crop, resize, flip, augment, GANet targets, mask.

The crop keeps rows [round(crop_top * H), H) of the source frame (GANet: 160:720 of 720),
then resizes to input_size (bilinear image, nearest mask); lane points follow the same map
(points above the crop are dropped). In training: the horizontal flip (flip_prob), then with
`augment` GANet's photometric and affine ops (augment.py) on image, mask and lane points
together, drawn from a numpy Generator seeded by one draw of the harness-seeded torch RNG.
Samples are dicts of tensors: images uint8 (3, H, W), drivable uint8 (H, W), the GANet targets
at the heatmap size (with `lfa`, also the LFA's `lane_points`), and the frame index (metadata
stays with the dataset).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.errors import DatasetError
from workloads.datasets.tusimple import LaneFrame, drivable_mask
from workloads.lane_multitask.augment import ganet_augment
from workloads.lane_multitask.config import LanesConfig
from workloads.lane_multitask.targets import lane_targets, lfa_lane_points


def crop_top_px(cfg: LanesConfig) -> int:
    return int(round(cfg.crop_top * cfg.source_size[1]))


def to_input_coords(points: np.ndarray, cfg: LanesConfig) -> np.ndarray:
    """(n, 2) source (x, y) -> input pixels; points above the crop are dropped."""
    (h_in, w_in), (w_src, h_src), top = cfg.input_size, cfg.source_size, crop_top_px(cfg)
    out = np.stack([points[:, 0] * w_in / w_src, (points[:, 1] - top) * h_in / (h_src - top)], 1)
    return out[out[:, 1] >= 0]


class LaneDataset(torch.utils.data.Dataset):
    def __init__(self, root: Path, frames: list[LaneFrame], cfg: LanesConfig, train: bool) -> None:
        self.root = Path(root)
        self.frames = frames
        self.cfg = cfg
        self.train = train
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index in self._cache:
            return self._cache[index]
        cfg, frame = self.cfg, self.frames[index]
        (h_in, w_in), (w_src, h_src), top = cfg.input_size, cfg.source_size, crop_top_px(cfg)
        path = self.root / frame.raw_file
        try:
            with Image.open(path) as im:
                if im.size != (w_src, h_src):
                    raise DatasetError(f"{path}: image is {im.width}x{im.height} but the frames "
                                       f"of this dataset are {w_src}x{h_src} (source_size)")
                # JPEG draft: decode at a reduced scale when the input is much smaller
                im.draft("RGB", (w_in, int(h_in * h_src / (h_src - top))))
                sx, sy = im.size[0] / w_src, im.size[1] / h_src
                crop = im.convert("RGB").crop((0, round(top * sy), round(w_src * sx), round(h_src * sy)))
                image = np.asarray(crop.resize((w_in, h_in), Image.BILINEAR), dtype=np.uint8)
        except OSError as exc:
            raise DatasetError(f"{path}: cannot decode image ({exc})") from None
        mask, _ = drivable_mask(self.root, frame, cfg.source_size, cfg.drivable_source != "derived")
        mask_in = np.asarray(Image.fromarray(mask[top:]).resize((w_in, h_in), Image.NEAREST))
        if cfg.cache_decoded:
            self._cache[index] = (image, mask_in)
        return image, mask_in

    def __getitem__(self, index: int) -> dict[str, Any]:
        cfg = self.cfg
        image, mask = self._load(index)
        lanes = [to_input_coords(p, cfg) for p in self.frames[index].valid_lanes()]
        if self.train and cfg.flip_prob > 0 and float(torch.rand(())) < cfg.flip_prob:
            image, mask = image[:, ::-1], mask[:, ::-1]
            w_in = cfg.input_size[1]
            lanes = [np.stack([w_in - 1 - p[:, 0], p[:, 1]], 1) for p in lanes]
        if self.train and cfg.augment:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            image, mask, lanes = ganet_augment(image, mask, lanes, rng)
        sample: dict[str, Any] = {
            "images": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "drivable": torch.from_numpy(np.array(mask, copy=True)),
            "index": index,
        }
        if self.train:
            targets = lane_targets(lanes, cfg.hm_size, cfg.hm_stride, cfg.radius,
                                   cfg.root_radius, cfg.joint_weights)
            sample.update({k: torch.from_numpy(v) for k, v in targets.items()})
            if cfg.lfa:
                sample["lane_points"] = torch.from_numpy(lfa_lane_points(
                    lanes, cfg.hm_size, cfg.hm_stride, cfg.lfa_lane_samples, cfg.lfa_max_lanes))
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "index"}
    out["index"] = torch.tensor([s["index"] for s in samples])
    return out
