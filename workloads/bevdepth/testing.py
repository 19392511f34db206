"""Random batches in the agreed nuScenes batch format, with a plausible 6-camera rig.

For tests and for timing the model without a dataset: level pinhole cameras around the
ego (nuScenes-like yaws, 1.5 m high), identity ida/bda unless asked otherwise, random GT
boxes inside the BEV range and sparse random lidar depth; `cfg.num_keys` key frames.
"""
from __future__ import annotations

import math

import torch

from workloads.bevdepth.config import CLASSES, BEVDepthConfig
from workloads.bevdepth.multikey import CAMERA_MATS

CAM_YAWS_DEG = (55.0, 0.0, -55.0, 110.0, 180.0, -110.0)


def camera_rig(batch: int, image_size: tuple[int, int], num_cams: int = 6,
               fov_deg: float = 70.0) -> dict[str, torch.Tensor]:
    h, w = image_size
    # camera axes (x right, y down, z forward) expressed in the ego frame for yaw 0
    base = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    s2e = torch.eye(4).repeat(num_cams, 1, 1)
    for i in range(num_cams):
        yaw = math.radians(CAM_YAWS_DEG[i % len(CAM_YAWS_DEG)])
        rz = torch.tensor([[math.cos(yaw), -math.sin(yaw), 0.0],
                           [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
        s2e[i, :3, :3] = rz @ base
        s2e[i, :3, 3] = torch.tensor([1.0 * math.cos(yaw), 1.0 * math.sin(yaw), 1.5])
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    intrin = torch.eye(4)
    intrin[0, 0] = intrin[1, 1] = f
    intrin[0, 2], intrin[1, 2] = w / 2, h / 2
    eye = torch.eye(4)
    return {
        "sensor2ego_mats": s2e.expand(batch, -1, -1, -1).clone(),
        "intrin_mats": intrin.expand(batch, num_cams, -1, -1).clone(),
        "ida_mats": eye.expand(batch, num_cams, -1, -1).clone(),
        "sensor2sensor_mats": eye.expand(batch, num_cams, -1, -1).clone(),
        "bda_mat": eye.expand(batch, -1, -1).clone(),
    }


def random_boxes(num: int, cfg: BEVDepthConfig, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = cfg.x_bound[0] * 0.9, cfg.x_bound[1] * 0.9
    xy = torch.rand(num, 2, generator=generator) * (hi - lo) + lo
    z = torch.rand(num, 1, generator=generator) * 2 - 1
    wlh = torch.rand(num, 3, generator=generator) * torch.tensor([2.0, 4.0, 1.5]) + 0.5
    yaw = (torch.rand(num, 1, generator=generator) * 2 - 1) * math.pi
    vel = torch.randn(num, 2, generator=generator)
    labels = torch.randint(0, len(CLASSES), (num,), generator=generator)
    return torch.cat([xy, z, wlh, yaw, vel], 1), labels


def random_batch(cfg: BEVDepthConfig, batch: int = 2, objects: int = 8, seed: int = 0
                 ) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    n = cfg.num_cams
    out: dict[str, object] = dict(camera_rig(batch, cfg.image_size, n))
    out["imgs"] = torch.randn(batch, n, 3, h, w, generator=g)
    if cfg.num_keys > 1:
        # A multi-key batch as MultiKeyDataset collates it: (B, K, N, ...) images and camera
        # mats, key 0 first; the earlier keys see other pixels from a rig that did not move.
        out["imgs"] = torch.stack([out["imgs"], *(torch.randn(batch, n, 3, h, w, generator=g)
                                                   for _ in range(1, cfg.num_keys))], 1)
        for name in CAMERA_MATS:
            out[name] = torch.stack([out[name]] * cfg.num_keys, 1)
    depth = torch.rand(batch, n, h, w, generator=g) * 60
    depth[torch.rand(batch, n, h, w, generator=g) > 0.05] = 0.0
    out["depth_labels"] = depth
    boxes = [random_boxes(objects, cfg, g) for _ in range(batch)]
    out["gt_boxes"] = [b for b, _ in boxes]
    out["gt_labels"] = [lab for _, lab in boxes]
    out["metas"] = [{"sample_token": f"fake{i}"} for i in range(batch)]
    return out
