"""Smoke training from an untrained start to the NDS/mAP gate, through the harness."""
from __future__ import annotations

import pytest

NUSCENES_METRICS = {"mAP", "mATE", "mASE", "mAOE", "mAVE", "mAAE", "NDS"}

# Gates from three seeds each on 2 CPU cores (reference_results/*.csv, smoke rows):
# bevdepth NDS 0.246/0.192/0.201 (mean 0.213, mean - 3 std 0.126), mAP 0.130/0.097/0.109
# (0.112, 0.061); matrixvt NDS 0.163/0.158/0.179 (0.167, 0.134), mAP 0.032/0.044/0.055
# (0.043, 0.008). Untrained: NDS 0.044 / mAP 0.000 (NDS is not 0 untrained: its TP-error
# terms saturate at 1). Each gate sits near mean - 3 std and far above the untrained score.
GATES = {"bevdepth": (0.13, 0.06), "matrixvt": (0.13, 0.015)}


def _check_trained(record: dict, workload: str) -> None:
    assert record["status"] == "ok"
    assert NUSCENES_METRICS <= set(record["metrics"])
    nds_gate, map_gate = GATES[workload]
    assert record["metrics"]["NDS"] >= nds_gate, record["metrics"]
    assert record["metrics"]["mAP"] >= map_gate, record["metrics"]


def test_untrained_bevdepth_scores_near_zero(harness_run) -> None:
    record = harness_run("bevdepth", steps=1, warmup_steps=0, overrides=("lr_per_sample=0",))
    assert record["metrics"]["mAP"] < 0.01 and record["metrics"]["NDS"] < 0.08


def test_bevdepth_smoke_trains_to_gate(harness_run) -> None:
    _check_trained(harness_run("bevdepth"), "bevdepth")


# `slow`: with it the default suite took 19.7 min on 2 cores (limit ~20); `pytest -m slow` runs it.
@pytest.mark.slow
def test_matrixvt_smoke_trains_to_gate(harness_run) -> None:
    _check_trained(harness_run("matrixvt"), "matrixvt")


def test_trains_on_a_nuscenes_root_it_has_never_seen(harness_run, tmp_path) -> None:
    # What `harness run bevdepth --data DIR` does with a user's root: another seed, another
    # camera resolution, outside the cache, no infos yet (they are converted via the devkit).
    from workloads.datasets.nuscenes import write_synthetic_nuscenes

    root = write_synthetic_nuscenes(tmp_path / "nuscenes", seed=7, samples_per_scene=3,
                                    image_size=(640, 360), objects_per_scene=12)
    assert not (root / "nuscenes_infos_train.pkl").exists()
    record = harness_run("bevdepth", data=root, steps=3, warmup_steps=0)
    assert record["status"] == "ok", record.get("error")
    assert NUSCENES_METRICS <= set(record["metrics"])
    assert record["data_source"] == str(root)
    assert (root / "nuscenes_infos_train.pkl").is_file()
