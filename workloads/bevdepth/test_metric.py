"""nuScenes detection metric (shared, workloads/datasets/nuscenes_metric.py): known answers, and
equality with the devkit's DetectionEval on what BEVDepth writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.errors import UsageError

pytest.importorskip("nuscenes", reason="nuscenes-devkit (extra 'bevdepth') is not installed")

from workloads.datasets.nuscenes_metric import evaluate_detections, to_nuscenes_submission  # noqa: E402
from workloads.datasets.nuscenes import CLASSES, NuScenesDataParams, NuScenesDetDataset  # noqa: E402
from workloads.datasets.nuscenes_geometry import yaw_to_quat  # noqa: E402
from workloads.datasets.test_nuscenes import small_db  # noqa: E402


@pytest.fixture(scope="session")
def val(tmp_path_factory: pytest.TempPathFactory):
    """The small synthetic DB's val infos and the GT of each val sample as predictions."""
    root, infos = small_db(tmp_path_factory.getbasetemp())
    ds = NuScenesDetDataset(infos["val"], root, NuScenesDataParams(final_dim=(32, 64), return_depth=False))
    gt = []
    for i in range(len(ds)):
        s = ds[i]
        gt.append(dict(sample_token=s["metas"]["sample_token"], boxes=s["gt_boxes"].double(),
                       scores=torch.ones(len(s["gt_labels"])), labels=s["gt_labels"]))
    return root, infos["val"], gt


def test_ground_truth_as_predictions_scores_perfectly(val):
    _, infos, gt = val
    present = {CLASSES[int(label)] for p in gt for label in p["labels"]}
    assert present == set(CLASSES), "the small DB's val scene must hold all 10 classes"
    m = evaluate_detections(gt, infos, class_names=CLASSES)
    assert set(m) == {"mAP", "mATE", "mASE", "mAOE", "mAVE", "mAAE", "NDS"}
    assert m["mAP"] == pytest.approx(1.0, abs=1e-9)
    for key in ("mATE", "mASE", "mAOE", "mAVE", "mAAE"):
        assert m[key] < 1e-5, key  # float32 boxes through the ego frame and back
    assert m["NDS"] == pytest.approx(1.0, abs=1e-5)


def test_shifted_predictions_lower_map(val):
    _, infos, gt = val
    shift = torch.tensor([1.5, 0.0, 0.0, 0, 0, 0, 0, 0, 0], dtype=torch.float64)
    m = evaluate_detections([dict(p, boxes=p["boxes"] + shift) for p in gt], infos, class_names=CLASSES)
    # 1.5 m misses the 0.5 m and 1 m thresholds and matches at 2 m and 4 m (AP ~0.5 each
    # class, a little less where the shift crosses a class-range border).
    assert 0.35 < m["mAP"] < 0.51
    assert m["mATE"] == pytest.approx(1.5, abs=1e-3)
    assert m["NDS"] < 0.7


def _noisy(gt: list[dict], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for p in gt:
        b = p["boxes"].numpy().copy()
        n = len(b)
        b[:, :2] += rng.normal(0, 0.6, (n, 2))
        b[:, 3:6] *= rng.uniform(0.8, 1.25, (n, 3))
        b[:, 6] += rng.normal(0, 0.4, n)
        b[:, 7:] += rng.normal(0, 0.6, (n, 2))
        labels = p["labels"].numpy().copy()
        labels[rng.random(n) < 0.1] = rng.integers(0, 10)  # some wrong classes
        fp = np.concatenate([rng.uniform(-45, 45, (6, 2)), rng.uniform(0, 2, (6, 1)), rng.uniform(0.5, 4, (6, 3)),
                             rng.uniform(-3, 3, (6, 3))], 1)  # false positives
        keep = rng.random(n) > 0.15  # and misses
        out.append(dict(sample_token=p["sample_token"], boxes=np.concatenate([b[keep], fp]),
                        scores=rng.uniform(0.05, 1.0, int(keep.sum()) + 6),
                        labels=np.concatenate([labels[keep], rng.integers(0, 10, 6)])))
    return out


def test_nds_equals_the_devkit_detection_eval(val, tmp_path):
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    root, infos, gt = val
    preds = _noisy(gt, seed=0)
    ours = evaluate_detections(preds, infos, class_names=CLASSES)
    submission = to_nuscenes_submission(preds, infos, class_names=CLASSES)
    assert set(submission["results"]) == {i["sample_token"] for i in infos}
    path = tmp_path / "results_nusc.json"
    path.write_text(json.dumps(submission))
    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), eval_set="mini_val",
                       output_dir=str(tmp_path / "eval"), verbose=False)
    theirs, _ = ev.evaluate()
    assert 0.1 < ours["NDS"] < 0.9  # a non-trivial case
    assert ours["NDS"] == pytest.approx(theirs.nd_score, abs=1e-6)
    assert ours["mAP"] == pytest.approx(theirs.mean_ap, abs=1e-6)
    errors = theirs.tp_errors
    for name, key in (("trans_err", "mATE"), ("scale_err", "mASE"), ("orient_err", "mAOE"),
                      ("vel_err", "mAVE"), ("attr_err", "mAAE")):
        assert ours[key] == pytest.approx(errors[name], abs=1e-6), key


def _hand_made_info(token: str, anns: list[dict]) -> dict:
    pose = dict(translation=[100.0, 50.0, 0.0], rotation=list(yaw_to_quat(np.pi / 2)))
    cams = {c: dict(ego_pose=pose) for c in ("CAM_FRONT", "CAM_BACK")}
    return dict(sample_token=token, cam_infos=cams, lidar_infos={"LIDAR_TOP": dict(ego_pose=pose)}, ann_infos=anns)


def _ann(category: str, xy: tuple[float, float], attrs: list[str], pts: int = 10) -> dict:
    return dict(category_name=category, translation=[*xy, 0.8], size=[1.9, 4.5, 1.6],
                rotation=list(yaw_to_quat(0.3)), velocity=np.zeros(3), num_lidar_pts=pts, num_radar_pts=0,
                attribute_names=attrs)


def test_hand_made_known_answer_and_filters():
    """One car GT in range (plus one out of range and one with no points, both ignored) and
    a bicycle in a bike rack (ignored); an exact car prediction. Only car scores: AP 1 for
    car, 0 elsewhere; TP errors 0 for car, 1 for the other classes, NaN where undefined."""
    anns = [_ann("vehicle.car", (110.0, 60.0), ["vehicle.parked"]),
            _ann("vehicle.car", (100.0, 120.0), ["vehicle.parked"]),  # 70 m away: beyond 50 m
            _ann("vehicle.car", (95.0, 45.0), ["vehicle.parked"], pts=0),  # no points
            _ann("vehicle.bicycle", (90.0, 40.0), ["cycle.without_rider"]),
            dict(_ann("static_object.bicycle_rack", (90.0, 40.0), []), size=[3.0, 3.0, 2.0])]
    info = _hand_made_info("tok", anns)
    # Ego faces global +y: global (110, 60) is ego (x=10, y=-10); yaw 0.3 - pi/2.
    # An exact bicycle prediction too: if the rack filter failed, bicycle would score AP 1.
    boxes = np.array([[10.0, -10.0, 0.8, 1.9, 4.5, 1.6, 0.3 - np.pi / 2, 0, 0],
                      [-10.0, 10.0, 0.8, 1.9, 4.5, 1.6, 0.3 - np.pi / 2, 0, 0]])
    pred = dict(sample_token="tok", boxes=boxes, scores=np.array([0.9, 0.8]),
                labels=np.array([CLASSES.index("car"), CLASSES.index("bicycle")]))
    m = evaluate_detections([pred], [info], class_names=CLASSES)
    assert m["mAP"] == pytest.approx(0.1)
    assert m["mATE"] == pytest.approx(0.9) and m["mASE"] == pytest.approx(0.9)
    assert m["mAOE"] == pytest.approx(8 / 9)  # cones have no orientation error
    assert m["mAVE"] == pytest.approx(7 / 8) and m["mAAE"] == pytest.approx(7 / 8)  # nor barriers
    nds = (5 * 0.1 + 0.1 + 0.1 + 1 / 9 + 1 / 8 + 1 / 8) / 10
    assert m["NDS"] == pytest.approx(nds)
    with pytest.raises(UsageError, match="not in the val infos"):
        evaluate_detections([dict(pred, sample_token="other")], [info], class_names=CLASSES)
    with pytest.raises(UsageError, match="size <= 0"):  # the devkit would assert mid-accumulate
        evaluate_detections([dict(pred, boxes=boxes * [1, 1, 1, -1, 1, 1, 1, 1, 1])], [info], class_names=CLASSES)


def devkit_metrics(info: dict, tmp_path) -> dict:
    """nuscenes-devkit's DetectionEval on a written predictions file (record["predictions"])."""
    from pathlib import Path

    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    gt = info["ground_truth"]
    nusc = NuScenes(gt["version"], gt["dataroot"], verbose=False)
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(Path(info["path"])),
                       eval_set=gt["eval_set"], output_dir=str(tmp_path / "devkit-eval"), verbose=False)
    m, _ = ev.evaluate()
    out = {"mAP": m.mean_ap, "NDS": m.nd_score}
    out.update({key: m.tp_errors[name] for name, key in (
        ("trans_err", "mATE"), ("scale_err", "mASE"), ("orient_err", "mAOE"), ("vel_err", "mAVE"),
        ("attr_err", "mAAE"))})
    return out


def test_written_submission_rescores_to_the_workload_metrics(val, tmp_path):
    from workloads.bevdepth import BEVDepthWorkload

    root, _, gt = val
    wl = BEVDepthWorkload(BEVDepthWorkload.presets()["smoke"])
    wl.datasets(root, tmp_path)
    preds = _noisy(gt, seed=1)
    ours = wl.evaluate(preds)
    info = wl.write_predictions(preds, tmp_path)
    assert info["format"] == "nuscenes-detection" and info["split"] == "val"
    assert info["ground_truth"] == {"dataroot": str(root.resolve()), "version": "v1.0-mini",
                                    "eval_set": "mini_val"}
    written = json.loads(open(info["path"]).read())
    assert set(written) == {"meta", "results"} and written["meta"]["use_camera"] is True
    theirs = devkit_metrics(info, tmp_path)
    assert 0.1 < ours["NDS"] < 0.9  # a non-trivial case
    for key, value in theirs.items():
        assert abs(ours[key] - value) < 1e-6, key
