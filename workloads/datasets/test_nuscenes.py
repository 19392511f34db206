"""nuScenes data layer: the synthetic DB loads in the devkit, infos carry BEVDepth's fields,
batches have the documented shapes, depth labels land on the objects, bad data is named."""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import DatasetError, MissingExtra, UsageError

pytest.importorskip("nuscenes", reason="nuscenes-devkit (extra 'bevdepth') is not installed")

from workloads.datasets.nuscenes import (  # noqa: E402
    BEVDEPTH_CAMS,
    CLASSES,
    NuScenesDataParams,
    NuScenesDetDataset,
    collate_nuscenes,
    create_infos,
    load_infos,
    write_infos,
    write_synthetic_nuscenes,
)
from workloads.datasets.nuscenes_dataset import ego_frame_boxes  # noqa: E402
from workloads.datasets.nuscenes_geometry import quat_to_matrix  # noqa: E402

# Two scenes: scene-0061 (mini_train) and scene-0103 (mini_val); ~1 s to write.
SMALL = dict(num_scenes=2, samples_per_scene=4, image_size=(320, 180), objects_per_scene=24, seed=0)
PARAMS = NuScenesDataParams(final_dim=(64, 176), resize_lim=(0.48, 0.62))


def small_db(base: Path) -> tuple[Path, dict[str, list[dict]]]:
    """The shared small DB and its infos (the writer's marker makes repeat calls free)."""
    root = write_synthetic_nuscenes(base / "nuscenes-small", **SMALL)
    if not (root / "nuscenes_infos_val.pkl").is_file():
        write_infos(root, "v1.0-mini")
    return root, {s: load_infos(root / f"nuscenes_infos_{s}.pkl") for s in ("train", "val")}


@pytest.fixture(scope="session")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict]]]:
    return small_db(tmp_path_factory.getbasetemp())


def test_synthetic_db_loads_in_the_devkit(db):
    from nuscenes import NuScenes
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.utils.splits import create_splits_scenes

    root, _ = db
    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    assert [s["name"] for s in nusc.scene] == ["scene-0061", "scene-0103"]
    splits = create_splits_scenes()
    assert "scene-0061" in splits["mini_train"] and "scene-0103" in splits["mini_val"]
    assert len(nusc.sample) == 8
    sample = nusc.sample[1]
    assert set(sample["data"]) == {*BEVDEPTH_CAMS, "LIDAR_TOP"}
    cam = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
    from PIL import Image
    assert Image.open(root / cam["filename"]).size == (320, 180) == (cam["width"], cam["height"])
    points = np.fromfile(root / nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["filename"], np.float32)
    assert points.size % 5 == 0 and points.size // 5 > 5000
    names = {category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation}
    assert names == set(CLASSES)
    # Constant velocities: the devkit's centred difference recovers them at every sample.
    ann = next(a for a in nusc.sample_annotation if a["prev"] and a["next"] and a["attribute_tokens"]
               and nusc.get("attribute", a["attribute_tokens"][0])["name"] == "vehicle.moving")
    v_mid, v_next = nusc.box_velocity(ann["token"]), nusc.box_velocity(ann["next"])
    assert np.linalg.norm(v_mid[:2]) > 0.5 and np.allclose(v_mid, v_next, atol=1e-6)
    assert any(a["num_lidar_pts"] > 50 for a in nusc.sample_annotation)


def test_writer_is_deterministic_and_reuses_a_complete_db(db, tmp_path):
    root, _ = db
    stamp = (root / "v1.0-mini" / "sample.json").stat().st_mtime_ns
    assert write_synthetic_nuscenes(root, **SMALL) == root
    assert (root / "v1.0-mini" / "sample.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    tiny = dict(num_scenes=1, samples_per_scene=2, image_size=(96, 54), objects_per_scene=12, seed=3)
    a, b = write_synthetic_nuscenes(tmp_path / "a", **tiny), write_synthetic_nuscenes(tmp_path / "b", **tiny)
    for table in ("sample_annotation", "ego_pose", "calibrated_sensor"):
        assert (a / "v1.0-mini" / f"{table}.json").read_text() == (b / "v1.0-mini" / f"{table}.json").read_text()
    assert not list(tmp_path.glob(".*tmp*"))  # temp folders renamed or removed
    with pytest.raises(UsageError):
        write_synthetic_nuscenes(tmp_path / "c", num_scenes=11)


def test_infos_have_bevdepth_fields(db):
    root, infos = db
    assert len(infos["train"]) == 4 and len(infos["val"]) == 4
    info = infos["val"][0]
    for key in ("sample_token", "timestamp", "scene_token", "cam_infos", "lidar_infos", "cam_sweeps",
                "lidar_sweeps", "ann_infos"):
        assert key in info
    assert set(info["cam_infos"]) == set(BEVDEPTH_CAMS)
    cam = info["cam_infos"]["CAM_FRONT"]
    for key in ("filename", "calibrated_sensor", "ego_pose", "timestamp", "height", "width", "is_key_frame"):
        assert key in cam
    assert np.asarray(cam["calibrated_sensor"]["camera_intrinsic"]).shape == (3, 3)
    assert set(info["lidar_infos"]["LIDAR_TOP"]) >= {"filename", "calibrated_sensor", "ego_pose", "timestamp"}
    ann = info["ann_infos"][0]
    for key in ("translation", "rotation", "size", "category_name", "velocity", "num_lidar_pts",
                "num_radar_pts", "instance_token", "attribute_tokens"):
        assert key in ann
    assert np.asarray(ann["velocity"]).shape == (3,)
    assert create_infos(root, "v1.0-mini")["val"][0]["sample_token"] == info["sample_token"]


def test_batch_has_the_documented_shapes(db):
    root, infos = db
    ds = NuScenesDetDataset(infos["train"], root, PARAMS, train=True)
    batch = collate_nuscenes([ds[0], ds[1]])
    h, w = PARAMS.final_dim
    assert batch["imgs"].shape == (2, 6, 3, h, w) and batch["imgs"].dtype == torch.float32
    for key in ("sensor2ego_mats", "intrin_mats", "ida_mats", "sensor2sensor_mats"):
        assert batch[key].shape == (2, 6, 4, 4), key
    assert torch.equal(batch["sensor2sensor_mats"], torch.eye(4).expand(2, 6, 4, 4))
    assert batch["bda_mat"].shape == (2, 4, 4)
    assert batch["depth_labels"].shape == (2, 6, h, w) and (batch["depth_labels"] > 0).any()
    assert len(batch["gt_boxes"]) == 2 and batch["gt_boxes"][0].shape[1] == 9
    assert batch["gt_labels"][0].dtype == torch.int64 and len(batch["gt_labels"][0]) == len(batch["gt_boxes"][0])
    assert int(batch["gt_labels"][0].max()) < len(CLASSES)
    meta = batch["metas"][0]
    assert meta["sample_token"] == infos["train"][0]["sample_token"]
    assert np.asarray(meta["ego2global_rotation"]).shape == (4,)
    assert abs(float(batch["imgs"].mean())) < 3.0  # normalised, not raw 0..255


def test_eval_boxes_match_annotations_and_bda_moves_them(db):
    root, infos = db
    info = infos["val"][1]
    sample = NuScenesDetDataset(infos["val"], root, PARAMS, train=False)[1]
    assert torch.equal(sample["bda_mat"], torch.eye(4))
    boxes = sample["gt_boxes"].double().numpy()
    rot, trans = quat_to_matrix(sample["metas"]["ego2global_rotation"]), sample["metas"]["ego2global_translation"]
    anns = np.array([a["translation"] for a in info["ann_infos"]])
    for box in boxes:  # back to global: every GT box is an annotation's centre (z = box centre)
        assert np.linalg.norm(anns - (rot @ box[:3] + trans), axis=1).min() < 1e-3
    torch.manual_seed(0)
    train = NuScenesDetDataset(infos["val"], root, PARAMS, train=True)[1]
    bda = train["bda_mat"].double().numpy()
    assert not np.allclose(bda, np.eye(4))
    assert np.allclose(train["gt_boxes"][:, :3].double().numpy(), boxes[:, :3] @ bda[:3, :3].T, atol=1e-3)


def _unproject(batch: dict, b: int, cam: int) -> np.ndarray:
    """Depth-label pixels back to ego-frame points through ida, intrinsics and extrinsics."""
    depth = batch["depth_labels"][b, cam].double().numpy()
    rows, cols = np.nonzero(depth)
    d = depth[rows, cols]
    ida = batch["ida_mats"][b, cam].double().numpy()
    uv = np.stack([cols + 0.5, rows + 0.5], 1)
    uv = (uv - ida[:2, 3]) @ np.linalg.inv(ida[:2, :2]).T  # augmented -> original pixels
    k = batch["intrin_mats"][b, cam, :3, :3].double().numpy()
    pts_cam = np.stack([(uv[:, 0] - k[0, 2]) / k[0, 0], (uv[:, 1] - k[1, 2]) / k[1, 1], np.ones(len(d))], 1) * d[:, None]
    s2e = batch["sensor2ego_mats"][b, cam].double().numpy()
    return pts_cam @ s2e[:3, :3].T + s2e[:3, 3], d


def test_depth_labels_land_on_the_ground_or_the_objects(db):
    root, infos = db
    torch.manual_seed(1)
    ds = NuScenesDetDataset(infos["train"], root, PARAMS, train=True)  # with image augmentation
    batch = collate_nuscenes([ds[2]])
    boxes, _ = ego_frame_boxes(infos["train"][2], BEVDEPTH_CAMS, CLASSES)  # before BDA
    on_objects, total, good = 0, 0, 0
    for cam in range(6):
        pts, d = _unproject(batch, 0, cam)
        # A pixel spans d / f metres; allow that plus sensor noise.
        tol = 0.25 + 2.0 * d / batch["intrin_mats"][0, cam, 0, 0].item() / batch["ida_mats"][0, cam, 0, 0].abs().item()
        ground = np.abs(pts[:, 2]) < tol
        inside = np.zeros(len(pts), bool)
        for x, y, z, w, length, h, yaw, _, _ in boxes:
            c, s = np.cos(yaw), np.sin(yaw)
            rel = pts - [x, y, z]
            lx, ly = c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]
            inside |= ((np.abs(lx) < length / 2 + tol) & (np.abs(ly) < w / 2 + tol)
                       & (np.abs(rel[:, 2]) < h / 2 + tol))
        clutter = np.abs(pts[:, 1]) > 15.5  # unannotated buildings behind the sidewalks
        on_objects += int((inside & ~ground).sum())
        good += int((ground | inside | clutter).sum())
        total += len(pts)
    assert total > 1000 and good / total > 0.97, (good, total)
    assert on_objects > 100


def test_camera_render_agrees_with_the_calibration():
    from workloads.datasets.nuscenes_render import _CORNERS, Boxes, CameraView, camera_calibration

    trans, rot, k = camera_calibration("CAM_FRONT_LEFT", (320, 180), np.random.default_rng(0))
    view = CameraView(trans, rot, k, (320, 180))
    yaw = 0.4
    box = Boxes(np.array([[9.0, 9.0, 1.0]]), np.array([[2.0, 4.0, 2.0]]), np.array([yaw]),
                np.array([[0.0, 200.0, 0.0]]), np.array([10.0]))
    empty = Boxes(*(np.zeros((0,) + a.shape[1:]) for a in (box.centers, box.sizes, box.yaws, box.colors,
                                                         box.intensity)))
    diff = np.abs(np.asarray(view.render(np.eye(3), box), np.float64)
                  - np.asarray(view.render(np.eye(3), empty), np.float64)).max(2) > 12
    rows, cols = np.nonzero(diff)
    c, s = np.cos(yaw), np.sin(yaw)
    corners = (_CORNERS * [4.0, 2.0, 2.0]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + box.centers[0]
    cam = (corners - trans) @ rot
    uv = (cam @ k.T)[:, :2] / cam[:, 2:3]
    # The painted pixels span exactly the box's projected corners (1-2 px of rasterisation).
    assert abs(cols.min() - uv[:, 0].min()) < 2 and abs(cols.max() - uv[:, 0].max()) < 2
    assert abs(rows.min() - uv[:, 1].min()) < 2 and abs(rows.max() - uv[:, 1].max()) < 2


def _broken_copy(root: Path, dst: Path) -> Path:
    shutil.copytree(root / "v1.0-mini", dst / "v1.0-mini")
    shutil.copytree(root / "maps", dst / "maps")
    (dst / "samples").symlink_to(root / "samples")
    return dst


def test_malformed_tables_name_the_file_and_field(db, tmp_path):
    root, _ = db
    bad = _broken_copy(root, tmp_path / "missing")
    (bad / "v1.0-mini" / "sample_annotation.json").unlink()
    with pytest.raises(DatasetError, match=r"sample_annotation\.json.*sample_annotation"):
        create_infos(bad, "v1.0-mini")
    bad = _broken_copy(root, tmp_path / "field")
    path = bad / "v1.0-mini" / "sample_annotation.json"
    rows = json.loads(path.read_text())
    del rows[5]["num_lidar_pts"]
    path.write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match=r"sample_annotation\.json.*'num_lidar_pts'"):
        create_infos(bad, "v1.0-mini")
    bad = _broken_copy(root, tmp_path / "token")
    path = bad / "v1.0-mini" / "sample.json"
    rows = json.loads(path.read_text())
    del rows[0]["scene_token"]
    path.write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match=r"sample\.json.*'scene_token'"):
        create_infos(bad, "v1.0-mini")
    bad = _broken_copy(root, tmp_path / "map")
    shutil.rmtree(bad / "maps")
    with pytest.raises(DatasetError, match=r"\.png.*'filename'"):
        create_infos(bad, "v1.0-mini")


def test_malformed_infos_and_missing_files_name_the_file_and_field(db, tmp_path):
    root, infos = db
    broken = [dict(i) for i in infos["val"]]
    del broken[2]["cam_infos"]
    pkl = tmp_path / "nuscenes_infos_val.pkl"
    pkl.write_bytes(pickle.dumps(broken))
    with pytest.raises(DatasetError, match=r"nuscenes_infos_val\.pkl.*info 2.*'cam_infos\."):
        NuScenesDetDataset(pkl, root, PARAMS)
    broken = [dict(i) for i in infos["val"]]
    broken[0]["ann_infos"] = [{k: v for k, v in a.items() if k != "size"} for a in broken[0]["ann_infos"]]
    with pytest.raises(DatasetError, match=r"'ann_infos\.0\.size'"):
        NuScenesDetDataset(broken, root, PARAMS)
    missing = [dict(i, cam_infos=dict(i["cam_infos"])) for i in infos["val"]]
    missing[0]["cam_infos"]["CAM_BACK"] = dict(missing[0]["cam_infos"]["CAM_BACK"], filename="samples/none.jpg")
    with pytest.raises(DatasetError, match=r"none\.jpg.*'cam_infos\.CAM_BACK\.filename'"):
        NuScenesDetDataset(missing, root, PARAMS)[0]
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"junk\.pkl"):
        load_infos(tmp_path / "junk.pkl")
    tiny_scale = NuScenesDataParams(final_dim=(64, 176), resize_lim=(0.10, 0.12))  # ~1/5 of the eval scale
    with pytest.raises(UsageError, match="resize_lim"):
        NuScenesDetDataset(infos["val"], root, tiny_scale, train=True)[0]


def test_devkit_is_optional(db, monkeypatch):
    root, _ = db
    monkeypatch.setitem(sys.modules, "nuscenes", None)
    monkeypatch.setitem(sys.modules, "nuscenes.nuscenes", None)
    with pytest.raises(MissingExtra, match=r"perception-harness\[bevdepth\]"):
        create_infos(root, "v1.0-mini")
    code = ("import sys; sys.modules['nuscenes'] = None\n"
            "import workloads.datasets.nuscenes, workloads.datasets.nuscenes_metric\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
