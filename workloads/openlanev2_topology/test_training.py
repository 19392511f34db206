"""openlanev2 through the harness: smoke gate, unseen real-size root, the predictions file
re-scored by the devkit, DeepSpeed (bf16, accumulation) and the emulated NPU."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.pytest_plugin import assert_passes_reference_rows, reference_floor

OLV2_METRICS = {"DET_l", "DET_t", "TOP_ll", "TOP_lt", "OLS", "F_score"}
# A small synthetic set for the plumbing tests (the smoke preset's own set is the gate's).
SMALL = ("synthetic_train_segments=2", "synthetic_val_segments=1",
         "synthetic_frames_per_segment=4")
# The gate is `harness check` against the smoke rows of reference_results/openlanev2.csv (one
# source of numbers: seeds and CPU kernel paths in their `source` and in
# reference_results/README.md). A higher-is-better row fails only below value - tolerance.
def test_untrained_scores_zero(harness_run) -> None:
    record = harness_run("openlanev2", steps=1, warmup_steps=0, overrides=("lr=0",))
    assert record["status"] == "ok", record.get("error")
    m = record["metrics"]
    # The synthetic val split holds all 13 traffic-element attributes, so DET_t (the mean AP
    # over them) gives no free AP 1 to an absent attribute and is 0 untrained (it was 0.54
    # when each segment had one sign, which put the untrained OLS at 0.135).
    assert m["DET_t"] < 0.001 and m["OLS"] < 0.001, m
    # The gate has teeth: the untrained model is far below the rows' floors.
    for name in ("DET_l", "F_score"):
        assert m[name] < reference_floor("openlanev2", name) / 4, (name, m)


def test_smoke_trains_to_gate(harness_run) -> None:
    record = harness_run("openlanev2")
    assert record["status"] == "ok", record.get("error")
    assert OLV2_METRICS <= set(record["metrics"])
    assert_passes_reference_rows(record, "openlanev2")


def test_trains_on_a_real_size_root_it_has_never_seen_and_the_file_rescores(harness_run,
                                                                             tmp_path) -> None:
    # What `harness run openlanev2 --data ROOT` does with a user's subset_A root: another seed,
    # other segment ids and timestamps, the real camera sizes, no collections yet.
    from workloads.datasets.openlanev2_synth import write_synthetic_openlanev2
    from workloads.openlanev2_topology import score

    root = write_synthetic_openlanev2(tmp_path / "OpenLane-V2", seed=11, train_segments=2,
                                      val_segments=1, frames_per_segment=2, image_scale=1.0,
                                      first_segment=731, first_timestamp=315980000000000000)
    record = harness_run("openlanev2", data=root, steps=10, warmup_steps=0)
    assert record["status"] == "ok", record.get("error")
    assert OLV2_METRICS <= set(record["metrics"])
    assert not list(root.glob("*.pkl"))  # collections went to the cache
    assert record["data"]["from_data"]["cameras"].startswith(str(root / "train" / "00731"))
    assert record["config"]["workload"]["cameras"][0] == "ring_front_center"
    pred = record["predictions"]
    assert pred["format"] == "openlanev2-submission" and pred["split"] == "val"
    out = tmp_path / "run0"
    rescored = score(pred["ground_truth"], str(out / pred["path"]))
    assert rescored == pytest.approx(record["metrics"], abs=1e-9)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="DeepSpeed JIT-builds its CPU comm op and no C++ compiler is here")
def test_deepspeed_bf16_with_accumulation(harness_run) -> None:
    pytest.importorskip("deepspeed")
    # DeepSpeed refuses fp16 on the CPU; the seed's fp16 run is `--backend cuda` (README).
    record = harness_run("openlanev2", deepspeed="", grad_accum=2, precision="bf16", steps=8,
                         warmup_steps=2, overrides=SMALL)
    assert record["status"] == "ok", record.get("error")
    assert record["strategy"] == "deepspeed"
    assert record["throughput"]["optimizer_steps"] == 8
    assert record["throughput"]["micro_steps"] == 16
    assert OLV2_METRICS <= set(record["metrics"])


def test_runs_on_the_emulated_npu(tmp_path) -> None:
    # A subprocess: the emulated device registers PrivateUse1 once per process, before any
    # backward (the autograd engine sizes its device queues at its first backward).
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    args = [sys.executable, "-m", "harness.cli", "run", "openlanev2", "--backend", "npu",
            "--emulate", "--steps", "2", "--warmup-steps", "0", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"), "--no-checkpoint"]
    for item in SMALL:
        args += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "ok" and record["emulated"] and record["backend"] == "npu"
    assert OLV2_METRICS <= set(record["metrics"])
