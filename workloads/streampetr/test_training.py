"""StreamPETR through the harness: predictions file = metric, untrained score, unseen
1600x900 root, emulated device, divergence."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nuscenes", reason="nuscenes-devkit (extra 'bevdepth') is not installed")

from harness.pytest_plugin import assert_passes_reference_rows, reference_floor  # noqa: E402
from workloads.streampetr.test_streampetr import ORIGINAL_LOSS_NAMES  # noqa: E402

NUSCENES_METRICS = {"mAP", "mATE", "mASE", "mAOE", "mAVE", "mAAE", "NDS"}
# The gate is `harness check` against the smoke rows of reference_results/streampetr.csv (one
# source of numbers: seeds and CPU kernel paths in their `source` and in
# reference_results/README.md). Untrained (1 step, lr 0): NDS 0.0, mAP 0.0.
def test_predictions_file_rescored_by_the_devkit_gives_the_metrics(tmp_path: Path) -> None:
    """Noisy LIDAR-frame GT as predictions: our metric == DetectionEval on the written file."""
    import dataclasses

    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    from workloads.streampetr import StreamPETRWorkload
    from workloads.streampetr.config import StreamPETRConfig

    cfg = dataclasses.replace(StreamPETRConfig.smoke(), synthetic_scenes=2, synthetic_samples_per_scene=4,
                              synthetic_image_wh=(320, 180))
    wl = StreamPETRWorkload(cfg)
    data = wl.datasets(None, tmp_path / "cache")
    rng = np.random.default_rng(0)
    preds = []
    for i in range(len(data.val)):
        item = data.val[i]
        boxes = item["gt_boxes"].double().numpy().copy()
        boxes[:, :2] += rng.normal(0, 0.5, (len(boxes), 2))
        boxes[:, 7:] = np.nan_to_num(boxes[:, 7:]) + rng.normal(0, 0.5, (len(boxes), 2))
        meta = item["metas"]
        preds.append(dict(sample_token=meta["sample_token"], boxes=torch.from_numpy(boxes),
                          scores=torch.from_numpy(rng.uniform(0.1, 1, len(boxes))), labels=item["gt_labels"],
                          ego2global_rotation=meta["ego2global_rotation"],
                          ego2global_translation=meta["ego2global_translation"]))
    ours = wl.evaluate(preds)
    out = tmp_path / "predictions"
    out.mkdir()
    written = wl.write_predictions(preds, out)
    assert written["format"] == "nuscenes-detection" and written["split"] == "val"
    gt = written["ground_truth"]
    nusc = NuScenes(gt["version"], gt["dataroot"], verbose=False)
    theirs, _ = DetectionEval(nusc, config_factory("detection_cvpr_2019"), written["path"],
                              eval_set=gt["eval_set"], output_dir=str(tmp_path / "eval"), verbose=False).evaluate()
    assert 0.3 < ours["NDS"] < 0.95  # GT through the LIDAR frame: matches, imperfectly
    assert ours["NDS"] == pytest.approx(theirs.nd_score, abs=1e-6)
    assert ours["mAP"] == pytest.approx(theirs.mean_ap, abs=1e-6)
    for name, key in (("trans_err", "mATE"), ("scale_err", "mASE"), ("orient_err", "mAOE"),
                      ("vel_err", "mAVE"), ("attr_err", "mAAE")):
        assert ours[key] == pytest.approx(theirs.tp_errors[name], abs=1e-6), key
    for name, ap in theirs.mean_dist_aps.items():
        assert ours[f"AP_{name}"] == pytest.approx(ap, abs=1e-6)


# `slow` (CI budget): the untrained level is in reference_results (the gate's floors sit far
# above it); `pytest -m slow` re-measures it.
@pytest.mark.slow
def test_untrained_scores_near_zero(harness_run) -> None:
    record = harness_run("streampetr", steps=1, warmup_steps=0, overrides=("lr=0",))
    assert record["status"] == "ok", record.get("error")
    # The gate has teeth: the untrained model is far below the rows' floors.
    assert record["metrics"]["mAP"] < reference_floor("streampetr", "mAP") / 4
    assert record["metrics"]["NDS"] < reference_floor("streampetr", "NDS") / 2
    assert record["predictions"]["format"] == "nuscenes-detection"
    assert set(record["losses"][-1]) >= {"frame_0_loss_cls", "frame_0_enc_loss_iou", "frame_0_dn_loss_bbox"}


def test_smoke_trains_to_gate(harness_run) -> None:
    record = harness_run("streampetr")
    assert record["status"] == "ok", record.get("error")
    assert NUSCENES_METRICS <= set(record["metrics"])
    assert_passes_reference_rows(record, "streampetr")


def test_trains_on_a_1600x900_root_it_has_never_seen(harness_run, tmp_path) -> None:
    from workloads.datasets.nuscenes import write_synthetic_nuscenes

    root = write_synthetic_nuscenes(tmp_path / "nuscenes", seed=11, num_scenes=2, samples_per_scene=3,
                                    image_size=(1600, 900), objects_per_scene=12, lidar_points_per_ring=64)
    assert not (root / "streampetr_infos_train.pkl").exists()
    record = harness_run("streampetr", data=root, steps=10, warmup_steps=0, batch_size=1)
    assert record["status"] == "ok", record.get("error")
    assert NUSCENES_METRICS <= set(record["metrics"])
    assert (root / "streampetr_infos_train.pkl").is_file()
    assert "1600x900" in record["data"]["from_data"]["ida_resize_lim"]


@pytest.mark.parametrize("device", [("npu",), ("hpu", "--lazy")], ids=["npu", "hpu-lazy"])
def test_runs_on_an_emulated_device(tmp_path, harness_cache, device) -> None:
    # A subprocess: the emulated device registers PrivateUse1 once per process, and the
    # autograd engine of a process that already ran backward has no queue for it.
    import subprocess
    import sys

    out = tmp_path / device[0]
    small = ("synthetic_scenes=2", "synthetic_samples_per_scene=4", "synthetic_image_wh=320,180")
    args = [sys.executable, "-m", "harness.cli", "run", "streampetr", "--backend", *device, "--emulate",
            "--steps", "2", "--warmup-steps", "0", "--batch-size", "2", "--out", str(out),
            "--cache-dir", str(harness_cache)]
    for item in small:
        args += ["--set", item]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    record = json.loads((out / "record.json").read_text())
    assert proc.returncode == 0 and record["status"] == "ok", (proc.stderr[-2000:], record.get("error"))
    assert record["emulated"] and NUSCENES_METRICS <= set(record["metrics"])


def test_nan_grad_norm_stops_the_run_as_diverged(harness_run, monkeypatch, tmp_path) -> None:
    from harness.errors import Diverged
    from workloads.streampetr import StreamPETRWorkload

    original = StreamPETRWorkload.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):  # gradients turn NaN from the third loss() call on
        terms = original(self, model, batch)
        calls["n"] += 1
        if calls["n"] >= 3:
            terms["frame_0_loss_cls"].register_hook(lambda g: g * float("nan"))
        return terms

    monkeypatch.setattr(StreamPETRWorkload, "loss", poisoned)
    out = tmp_path / "diverged"
    with pytest.raises(Diverged) as exc:
        harness_run("streampetr", steps=6, warmup_steps=0, out=out)
    message = str(exc.value)
    assert re.search(r"non-finite grad norm at step \d", message), message
    smoke_names = {n for n in ORIGINAL_LOSS_NAMES if not re.match(r"frame_0_d[1-4]\.", n)}  # 2 layers
    for name in smoke_names:
        assert f"{name}=" in message, name
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "diverged" and "grad norm at step" in record["error"]


def test_numerical_parity_on_the_emulated_npu(tmp_path, harness_cache) -> None:
    """Loss and every gradient against float64 and fp32 CPU references (the fp64 side also
    checks the host matching accepts float64 inputs)."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "harness.cli", "parity", "--numerics", "streampetr", "--backend", "npu",
            "--emulate", "--steps", "2"]
    for item in ("synthetic_scenes=2", "synthetic_samples_per_scene=4", "synthetic_image_wh=320,180"):
        args += ["--set", item]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HARNESS_CACHE": str(harness_cache)})
    assert proc.returncode == 0 and "result: PASS" in proc.stdout, (proc.stdout[-2000:], proc.stderr[-2000:])
