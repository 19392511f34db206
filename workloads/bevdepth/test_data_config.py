"""BEVDepth on nuScenes roots of other image sizes: cameras, source size and the resize
range come from the data (BEVDepth's rule); explicit contradicting values are errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.errors import DatasetError
from workloads.bevdepth import BEVDepthWorkload
from workloads.bevdepth.config import CAMERAS, BEVDepthConfig
from workloads.bevdepth.data_config import config_from_data, resize_lim_for, resize_lim_suits

INFO_FILE = Path("/data/nuscenes_infos_train.pkl")


def _infos(w: int, h: int, cams: tuple[str, ...] = CAMERAS, n: int = 3) -> list[dict[str, Any]]:
    return [{"cam_infos": {c: {"width": w, "height": h, "filename": f"{c}/{i}.jpg"} for c in cams}}
            for i in range(n)]


def test_resize_rule_reproduces_the_published_ranges() -> None:
    assert resize_lim_for((256, 704), (1600, 900)) == pytest.approx((0.386, 0.55))
    # Megvii's 512x1408 experiments set (0.386 * 2, 0.55 * 2).
    assert resize_lim_for((512, 1408), (1600, 900)) == pytest.approx((0.772, 1.1))
    assert resize_lim_for((64, 176), (400, 225)) == pytest.approx((0.386, 0.55))
    assert resize_lim_for((64, 176), (1600, 900)) == pytest.approx((0.0965, 0.1375))


@pytest.mark.parametrize("wh", [(1600, 900), (400, 225), (640, 360), (800, 600), (1920, 1080)])
def test_smoke_config_follows_the_image_size(wh: tuple[int, int]) -> None:
    cfg, from_data = config_from_data(BEVDepthConfig.smoke(), frozenset(), _infos(*wh), Path("/data"), INFO_FILE)
    assert cfg.source_image_wh == wh
    assert cfg.ida_resize_lim == resize_lim_for(cfg.image_size, wh)
    assert resize_lim_suits(cfg.ida_resize_lim, cfg.image_size, wh)
    assert set(from_data) == {"cams", "num_cams", "source_image_wh", "ida_resize_lim"}
    assert all(str(INFO_FILE) in v for v in from_data.values())


def test_cameras_come_from_the_data_in_bevdepth_order() -> None:
    five = ("CAM_BACK", "CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT")
    infos = _infos(1600, 900, five) + _infos(1600, 900, (*five, "CAM_BACK_RIGHT"))
    cfg, _ = config_from_data(BEVDepthConfig.smoke(), frozenset(), infos, Path("/data"), INFO_FILE)
    assert cfg.cams == ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK")
    assert cfg.num_cams == 5
    with pytest.raises(DatasetError, match=r"nuscenes_infos_train\.pkl.*cam_infos\.CAM_BACK_RIGHT"):
        config_from_data(BEVDepthConfig.smoke(), frozenset({"cams"}), infos, Path("/data"), INFO_FILE)


def test_explicit_values_the_data_contradicts_are_errors() -> None:
    smoke = BEVDepthConfig.smoke()  # its (0.386, 0.55) suits 400x225, not 1600x900 at 64x176
    with pytest.raises(DatasetError, match=r"nuscenes_infos_train\.pkl.*width/height.*1600x900.*ida_resize_lim"):
        config_from_data(smoke, frozenset({"ida_resize_lim"}), _infos(1600, 900), Path("/data"), INFO_FILE)
    with pytest.raises(DatasetError, match=r"nuscenes_infos_train\.pkl.*num_cams=6"):
        config_from_data(smoke, frozenset({"num_cams"}), _infos(1600, 900, CAMERAS[:4]), Path("/data"), INFO_FILE)
    with pytest.raises(DatasetError, match=r"nuscenes_infos_train\.pkl.*different sizes"):
        config_from_data(smoke, frozenset(), _infos(1600, 900) + _infos(800, 450), Path("/data"), INFO_FILE)
    kept, from_data = config_from_data(smoke, frozenset({"ida_resize_lim"}), _infos(400, 225), Path("/data"),
                                       INFO_FILE)
    assert kept.ida_resize_lim == smoke.ida_resize_lim and "ida_resize_lim" not in from_data


@pytest.fixture(scope="module")
def root_1600(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workloads.datasets.nuscenes import write_synthetic_nuscenes

    # Two mini scenes (one train, one val) of the real nuScenes camera resolution.
    return write_synthetic_nuscenes(tmp_path_factory.mktemp("ns") / "nuscenes", seed=11, num_scenes=2,
                                    samples_per_scene=4, image_size=(1600, 900), objects_per_scene=10)


def test_training_samples_at_1600x900(root_1600: Path, tmp_path: Path) -> None:
    wl = BEVDepthWorkload(BEVDepthWorkload.presets()["smoke"])
    data = wl.datasets(root_1600, tmp_path)
    assert wl.config.source_image_wh == (1600, 900)
    assert data.from_data["ida_resize_lim"].startswith(str(root_1600 / "nuscenes_infos_train.pkl"))
    item = data.train[0]
    assert tuple(item["imgs"].shape) == (6, 3, 64, 176)
    assert 0.0965 <= float(item["ida_mats"][0, 0, 0].abs().hypot(item["ida_mats"][0, 0, 1])) <= 0.1375


def test_bevdepth_runs_on_1600x900_images_without_set(harness_run: Any, root_1600: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    record = harness_run("bevdepth", data=root_1600, steps=10, warmup_steps=2, checkpoint=False, out=out)
    assert record["status"] == "ok", record.get("error")
    assert {"mAP", "NDS"} <= set(record["metrics"])
    if "predictions" in record:  # the harness side of the predictions contract
        from workloads.bevdepth.test_metric import devkit_metrics

        pred = dict(record["predictions"], path=str(out / record["predictions"]["path"]))
        assert pred["format"] == "nuscenes-detection"
        results = json.loads(Path(pred["path"]).read_text())["results"]
        if any(results.values()):
            for key, value in devkit_metrics(pred, tmp_path).items():
                assert abs(record["metrics"][key] - value) < 1e-6, key
        else:  # the devkit refuses a submission without boxes; nothing found scores 0
            assert record["metrics"]["mAP"] == 0.0 and record["metrics"]["NDS"] == 0.0
