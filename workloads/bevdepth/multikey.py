"""BEVDepth's multi-key input (`num_keys`, the published "2key" rows: key_idxes=[-1]).

Each item holds the current key frame and the num_keys - 1 key frames before it in the
same scene (the converter records each info's previous key frame; at a scene start the
frame repeats itself, as BEVDepth's dataset does). Every key of one camera gets the SAME image
augmentation (one ida draw per camera, replayed), and the previous frames' cameras are
expressed in the CURRENT key ego frame through the global frame:

  sweepsensor2keyego  = (keyego2global)^-1 @ sweepego2global @ sweepsensor2sweepego
  keysensor2sweepsensor = (sweepsensor2sweepego)^-1 @ (sweepego2global)^-1 @ keyego2global @ keysensor2keyego

(per camera, with that camera's own ego pose, as BEVDepth's get_image). So lift-splat of a
previous frame already lands in the current BEV: the model pools each key with its own
mats and concatenates the BEV features (the previous ones without gradient, as the
original). Batch layout: imgs (B, K, N, 3, H, W) and the camera mats (B, K, N, 4, 4);
bda_mat, GT, depth labels and metas are the current key frame's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from workloads.datasets.nuscenes_dataset import (
    NuScenesDataParams,
    NuScenesDetDataset,
    _rigid_inverse,
)
from workloads.datasets.nuscenes_geometry import record_matrix

CAMERA_MATS = ("sensor2ego_mats", "intrin_mats", "ida_mats", "sensor2sensor_mats")


def previous_key_indices(infos: Sequence[dict]) -> list[int]:
    """Index of the key frame before each one (itself at a scene start, or where that frame
    is not in the list): by the converter's `prev_key_sample_token`, else (BEVDepth's own
    prepared infos) the previous info of the same scene in list order."""
    if all("prev_key_sample_token" in info for info in infos):
        index = {info["sample_token"]: i for i, info in enumerate(infos)}
        return [index.get(info["prev_key_sample_token"], i) for i, info in enumerate(infos)]
    return [i - 1 if i > 0 and infos[i - 1]["scene_token"] == info["scene_token"] else i
            for i, info in enumerate(infos)]


def sweep_mats(key_cam: dict, sweep_cam: dict) -> tuple[np.ndarray, np.ndarray]:
    """(sweepsensor2keyego, keysensor2sweepsensor) for one camera (module doc)."""
    key_ego, key_calib = record_matrix(key_cam["ego_pose"]), record_matrix(key_cam["calibrated_sensor"])
    sweep_ego, sweep_calib = record_matrix(sweep_cam["ego_pose"]), record_matrix(sweep_cam["calibrated_sensor"])
    sensor2keyego = _rigid_inverse(key_ego) @ sweep_ego @ sweep_calib
    key2sweep = _rigid_inverse(sweep_calib) @ _rigid_inverse(sweep_ego) @ key_ego @ key_calib
    return sensor2keyego, key2sweep


class MultiKeyDataset(NuScenesDetDataset):
    def __init__(self, infos: Sequence[dict] | Path | str, data_root: Path | str,
                 params: NuScenesDataParams = NuScenesDataParams(), *, train: bool = False,
                 num_keys: int = 2) -> None:
        super().__init__(infos, data_root, params, train=train)
        self.num_keys = num_keys
        self.previous = previous_key_indices(self.infos)
        self._seed = 0

    def _rng(self) -> np.random.Generator:
        # Replayed from one per-item seed: the first draws are the per-camera ida draws, so
        # each key of a camera gets the same augmentation.
        return np.random.default_rng(self._seed)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        self._seed = int(torch.randint(0, 2**62, (1,)).item())
        key = super().__getitem__(idx)
        mats = {k: [key[k]] for k in CAMERA_MATS}
        imgs = [key["imgs"]]
        key_info, j = self.infos[idx], idx
        for _ in range(1, self.num_keys):
            j = self.previous[j]
            sweep = self._sweep(idx, key_info, self.infos[j])
            imgs.append(sweep["imgs"])
            for k in CAMERA_MATS:
                mats[k].append(sweep[k])
        key["imgs"] = torch.stack(imgs)
        for k in CAMERA_MATS:
            key[k] = torch.stack(mats[k])
        return key

    def _sweep(self, idx: int, key_info: dict, info: dict) -> dict[str, torch.Tensor]:
        rng = self._rng()  # the same per-camera ida draws as the key frame
        n, (fh, fw) = len(self.params.cams), self.params.final_dim
        imgs = np.empty((n, 3, fh, fw), np.float32)
        s2e, s2s, intrins, idas = np.zeros((4, n, 4, 4))
        for i, cam in enumerate(self.params.cams):
            imgs[i], idas[i], _ = self.camera_image(idx, info, cam, rng)
            s2e[i], s2s[i] = sweep_mats(key_info["cam_infos"][cam], info["cam_infos"][cam])
            intrins[i] = np.eye(4)
            intrins[i, :3, :3] = info["cam_infos"][cam]["calibrated_sensor"]["camera_intrinsic"]

        def f32(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        return dict(imgs=torch.from_numpy(imgs), sensor2ego_mats=f32(s2e), intrin_mats=f32(intrins),
                    ida_mats=f32(idas), sensor2sensor_mats=f32(s2s))


def key_mats(mats: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The camera mats of key k from a (B, K, N, 4, 4) multi-key batch; bda is shared."""
    return {name: (m[:, k] if name in CAMERA_MATS else m) for name, m in mats.items()}
