"""BEVDepth 2-key input: batch shapes, the previous frame's cameras in the current ego
frame, and the previous BEV landing where the ego motion puts it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from workloads.bevdepth.config import BEVDepthConfig
from workloads.bevdepth.model import BEVDepth
from workloads.bevdepth.multikey import MultiKeyDataset, previous_key_indices, sweep_mats
from workloads.bevdepth.testing import camera_rig, random_batch
from workloads.bevdepth.view_transform import LSSViewTransform
from workloads.datasets.nuscenes_dataset import NuScenesDataParams
from workloads.datasets.nuscenes_geometry import yaw_to_quat

SMOKE2 = dataclasses.replace(BEVDepthConfig.smoke(), num_keys=2)


def _cam(ego_xy: tuple[float, float], ego_yaw: float) -> dict:
    return {"ego_pose": {"translation": [*ego_xy, 0.0], "rotation": list(yaw_to_quat(ego_yaw))},
            "calibrated_sensor": {"translation": [1.0, 0.0, 1.5], "rotation": list(yaw_to_quat(0.3))}}


def test_previous_key_frames_stay_in_their_scene() -> None:
    infos = [{"scene_token": s} for s in ("a", "a", "a", "b", "b")]
    assert previous_key_indices(infos) == [0, 0, 1, 3, 3]  # BEVDepth's prepared infos: list order
    linked = [dict(sample_token=t, prev_key_sample_token=p) for t, p in (("t2", "t1"), ("t1", ""), ("u1", "x"))]
    assert previous_key_indices(linked) == [1, 1, 2]  # the converter's links, in any order


def test_sweep_camera_in_the_current_ego_frame() -> None:
    # Ego heading global +y (yaw 90 deg); 0.5 s ago it was 4 m behind: global (100, 46).
    key, prev = _cam((100.0, 50.0), np.pi / 2), _cam((100.0, 46.0), np.pi / 2)
    s2e, key2sweep = sweep_mats(key, prev)
    calib = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    calib[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    calib[:3, 3] = [1.0, 0.0, 1.5]
    back = np.eye(4)
    back[0, 3] = -4.0  # the previous ego sits 4 m behind the current one, along ego x
    np.testing.assert_allclose(s2e, back @ calib, atol=1e-9)
    np.testing.assert_allclose(key2sweep, np.linalg.inv(s2e) @ calib, atol=1e-9)


def test_previous_bev_lands_where_the_ego_motion_puts_it() -> None:
    cfg = SMOKE2
    lss = LSSViewTransform(cfg.image_size, cfg.downsample_factor, cfg.d_bound, cfg.x_bound, cfg.y_bound, cfg.z_bound)
    key = camera_rig(1, cfg.image_size)
    prev = {k: v.clone() for k, v in key.items()}
    prev["sensor2ego_mats"][:, :, 0, 3] -= 4.0  # cameras of the previous key frame, 4 m back
    n, d = 6, lss.depth_channels
    h, w = cfg.image_size[0] // 16, cfg.image_size[1] // 16
    depth = torch.zeros(n, d, h, w)
    depth[:, int((20.0 - 2.0) / 2.0)] = 1.0  # every pixel at 20 m
    context = torch.zeros(n, 1, h, w)
    context[1, 0, h // 2, w // 2] = 1.0  # one pixel of CAM_FRONT (ego +x)
    cells = []
    for mats in (key, prev):
        bev = lss(depth, context, mats)[0, 0]
        assert bev.sum().item() == pytest.approx(1.0)
        cells.append(divmod(int(bev.argmax()), bev.shape[1]))  # (y, x)
    (ky, kx), (py, px) = cells
    assert py == ky and px == kx - 2  # 4 m = two 2-m cells further back


def test_two_key_model_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMOKE2, channels_last=False)
    model = BEVDepth(cfg)
    batch = random_batch(cfg, batch=2)
    imgs = batch["imgs"]
    assert tuple(imgs.shape[:3]) == (2, 2, 6)  # (B, keys, cameras, 3, H, W)
    mats = {k: v for k, v in batch.items() if k.endswith("_mats") or k == "bda_mat"}
    assert model.head.trunk.conv1.in_channels == 2 * cfg.context_channels  # the stacked BEV
    preds, depth = model(imgs, mats)
    h, w = cfg.image_size[0] // 16, cfg.image_size[1] // 16
    assert tuple(depth.shape) == (2 * 6, lss_bins(cfg), h, w)
    assert tuple(preds[0]["heatmap"].shape[-2:]) == (48, 48)
    sum(p["heatmap"].sum() for p in preds).backward()
    assert model.encoder.backbone.conv1.weight.grad is not None
    bev0 = model.bev(imgs[:, 0], {k: (v[:, 0] if v.dim() == 5 else v) for k, v in mats.items()})[0]
    assert bev0.shape[1] == cfg.context_channels


def lss_bins(cfg: BEVDepthConfig) -> int:
    lo, hi, step = cfg.d_bound
    return int((hi - lo) / step)


def test_two_key_dataset_items(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("nuscenes")
    from workloads.datasets.test_nuscenes import small_db

    root, infos = small_db(tmp_path_factory.getbasetemp())
    params = NuScenesDataParams(final_dim=(64, 176), resize_lim=(0.386, 0.55))
    ds = MultiKeyDataset(infos["train"], root, params, train=True, num_keys=2)
    first = ds[0]  # a scene start: the previous key frame is the frame itself
    assert tuple(first["imgs"].shape) == (2, 6, 3, 64, 176)
    assert tuple(first["sensor2ego_mats"].shape) == (2, 6, 4, 4) and tuple(first["bda_mat"].shape) == (4, 4)
    torch.testing.assert_close(first["sensor2ego_mats"][1], first["sensor2ego_mats"][0])
    torch.testing.assert_close(first["ida_mats"][1], first["ida_mats"][0])  # one ida draw per camera
    torch.testing.assert_close(first["imgs"][1], first["imgs"][0])
    # The val scene of the small DB drives (~1.7 m per key frame); eval: no augmentation.
    ds = MultiKeyDataset(infos["val"], root, params, train=False, num_keys=2)
    assert infos["val"][2]["prev_key_sample_token"] == infos["val"][1]["sample_token"]
    later = ds[2]
    key_ego = np.array(infos["val"][2]["cam_infos"]["CAM_FRONT"]["ego_pose"]["translation"])
    prev_ego = np.array(infos["val"][1]["cam_infos"]["CAM_FRONT"]["ego_pose"]["translation"])
    moved = (later["sensor2ego_mats"][1, :, :3, 3] - later["sensor2ego_mats"][0, :, :3, 3]).norm(dim=-1)
    assert np.linalg.norm(prev_ego - key_ego) > 1.0  # the ego drove between the two key frames
    # straight road, constant heading: every camera moved back by the ego displacement
    np.testing.assert_allclose(moved.numpy(), np.linalg.norm(prev_ego - key_ego), rtol=1e-4)
    assert (later["sensor2ego_mats"][1, :, 0, 3] < later["sensor2ego_mats"][0, :, 0, 3]).all()
    assert tuple(later["depth_labels"].shape) == (6, 64, 176)  # depth: current key only


def test_full_presets_key_frames_as_published() -> None:
    from workloads.bevdepth import BEVDepthWorkload, MatrixVTWorkload

    assert BEVDepthWorkload.presets()["full"].num_keys == 2  # the 2key rows
    assert MatrixVTWorkload.presets()["full"].num_keys == 1  # MatrixVT's exp: 1 key
    assert BEVDepthWorkload.presets()["smoke"].num_keys == MatrixVTWorkload.presets()["smoke"].num_keys == 1
