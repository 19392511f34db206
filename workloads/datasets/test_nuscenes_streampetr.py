"""StreamPETR temporal infos: links, sweeps, LIDAR-frame boxes and 2D targets agree with the devkit."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nuscenes", reason="nuscenes-devkit (extra 'bevdepth') is not installed")

from workloads.datasets.nuscenes_streampetr import (  # noqa: E402
    STREAMPETR_CAMS,
    box_corners,
    create_streampetr_infos,
    load_or_create_streampetr_infos,
)
from workloads.datasets.test_nuscenes import small_db  # noqa: E402


@pytest.fixture(scope="module")
def infos(tmp_path_factory: pytest.TempPathFactory):
    root, _ = small_db(tmp_path_factory.getbasetemp())
    return root, create_streampetr_infos(root, "v1.0-mini")


def test_temporal_links_and_sweeps(infos):
    _, by_split = infos
    train = by_split["train"]
    assert [i["frame_idx"] for i in train] == [0, 1, 2, 3]
    assert train[0]["prev"] == "" and train[-1]["next"] == ""
    for a, b in zip(train, train[1:]):
        assert a["next"] == b["token"] and b["prev"] == a["token"] and a["scene_token"] == b["scene_token"]
        assert b["timestamp"] > a["timestamp"]
    # A scene's first key frame has no sweep: StreamPETR starts a sequence there.
    assert train[0]["sweeps"] == [] and len(train[2]["sweeps"]) == 2
    newest = train[2]["sweeps"][0]
    assert newest["timestamp"] == train[1]["timestamp"]
    # sensor2lidar of the previous LIDAR frame = this frame's global->lidar @ its lidar->global
    expect = np.linalg.inv(train[2]["lidar2global"]) @ train[1]["lidar2global"]
    assert np.allclose(newest["sensor2lidar"], expect, atol=1e-9)


def test_boxes_in_the_lidar_frame_and_2d_targets_match_the_devkit(infos):
    from nuscenes import NuScenes
    from nuscenes.utils.geometry_utils import view_points

    root, by_split = infos
    info = by_split["val"][1]
    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    # The devkit's own boxes in the LIDAR frame (get_sample_data moves them there).
    _, boxes, _ = nusc.get_sample_data(nusc.get("sample", info["token"])["data"]["LIDAR_TOP"])
    by_token = {b.token: b for b in boxes}
    anns = info["ann_infos"]
    for k, ann in enumerate(anns):
        ref = by_token[ann["token"]]
        assert np.allclose(info["gt_boxes"][k, :3], ref.center, atol=1e-6)
        assert np.allclose(info["gt_boxes"][k, 3:6], ref.wlh)
        assert np.isclose(np.cos(info["gt_boxes"][k, 6] - ref.orientation.yaw_pitch_roll[0]), 1.0)
    assert info["valid_flag"].dtype == bool and info["gt_velocity"].shape == (len(anns), 2)
    moving = np.linalg.norm(info["gt_velocity"], axis=1) > 0.5
    assert moving.any()
    # 2D targets: the projected centre and box of every visible object, in each camera.
    total = 0
    for cam in STREAMPETR_CAMS:
        ci = info["cams"][cam]
        assert set(ci) >= {"data_path", "timestamp", "cam_intrinsic", "cam2lidar", "bboxes2d", "labels2d",
                           "centers2d", "depths"}
        _, cam_boxes, k = nusc.get_sample_data(nusc.get("sample", info["token"])["data"][cam])
        centres = {tuple(np.round(view_points(b.center[:, None], k, True)[:2, 0], 3)): b for b in cam_boxes
                   if b.center[2] > 0}
        for box, c, d in zip(ci["bboxes2d"], ci["centers2d"], ci["depths"]):
            ref = min(centres, key=lambda x: np.hypot(*(np.asarray(x) - c)))
            assert np.hypot(*(np.asarray(ref) - c)) < 1e-2
            assert d == pytest.approx(centres[ref].center[2], rel=1e-5)
            corners = view_points(centres[ref].corners(), k, True)[:2]
            assert box[0] == pytest.approx(max(corners[0].min(), 0), abs=1e-2)
            assert box[3] == pytest.approx(min(corners[1].max(), ci["height"]), abs=1e-2)
        total += len(ci["bboxes2d"])
    assert total > 5


def test_box_corners_are_the_devkit_corners():
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    box = Box([1.0, 2.0, 0.5], [1.9, 4.5, 1.6], Quaternion(axis=[0, 0, 1], angle=0.7))
    ours = box_corners(np.array(box.center), np.array(box.wlh), box.rotation_matrix)
    assert np.allclose(np.sort(ours, 0), np.sort(box.corners().T, 0))


def test_infos_are_written_once_and_reused(infos):
    root, _ = infos
    first = load_or_create_streampetr_infos(root, "v1.0-mini")
    path = root / "streampetr_infos_val.pkl"
    mtime = path.stat().st_mtime_ns
    again = load_or_create_streampetr_infos(root, "v1.0-mini")
    assert path.stat().st_mtime_ns == mtime
    assert [i["token"] for i in again["val"]] == [i["token"] for i in first["val"]]
