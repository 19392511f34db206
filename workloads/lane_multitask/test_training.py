"""lanes through the harness: untrained floor, smoke training to the gate, the official scorer
on the written predictions, and a TuSimple root without drivable masks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.pytest_plugin import assert_passes_reference_rows
from tests.tusimple_official import score_files

LANE_METRICS = {"Accuracy", "FP", "FN", "F1"}
IOU_METRICS = {"drivable_IoU_mean", "drivable_IoU_median", "drivable_mIoU",
               "drivable_IoU_lt_0.4", "drivable_IoU_ge_0.4"}

# The gate is `harness check` against the smoke train rows of reference_results/lanes.csv (one
# source of numbers: seeds and CPU kernel paths in their `source` and in
# reference_results/README.md). Untrained: F1 0, Accuracy 0 (no keypoint above the 0.3
# threshold), IoU mean below 0.7.
def _rescore(record: dict[str, Any], out: Path) -> dict[str, float]:
    info = record["predictions"]
    assert info["format"] == "tusimple" and info["split"] == "test"
    return score_files(out / info["path"], info["ground_truth"])


def test_untrained_lanes_scores_low(harness_run: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    record = harness_run("lanes", steps=1, warmup_steps=0, overrides=("lr=0",), out=tmp_path / "u")
    m = record["metrics"]
    assert record["status"] == "ok" and LANE_METRICS | IOU_METRICS <= set(m)
    assert m["F1"] < 0.05 and m["Accuracy"] < 0.1
    assert m["drivable_IoU_mean"] < 0.7


def test_smoke_trains_to_gate_and_official_rescoring_agrees(
        harness_run: Callable[..., dict[str, Any]], harness_cache: Path, tmp_path: Path) -> None:
    record = harness_run("lanes", out=tmp_path / "smoke")
    assert record["status"] == "ok", record.get("error")
    assert_passes_reference_rows(record, "lanes")
    m = record["metrics"]
    official = _rescore(record, tmp_path / "smoke")
    for name in LANE_METRICS:
        assert m[name] == pytest.approx(official[name], abs=1e-9), name
    submitted = (tmp_path / "smoke" / record["predictions"]["path"]).read_text().splitlines()
    run_times = [json.loads(line)["run_time"] for line in submitted]
    assert len(run_times) == 40 and max(run_times) < 200  # the scorer zeroes slower frames
    _onnx_parity(tmp_path / "smoke", harness_cache, tmp_path)


def _onnx_parity(run: Path, cache: Path, tmp_path: Path) -> None:
    """Issue 13 item 4 for lanes: the trained model exports (fixed H x W, dynamic batch) and
    its ONNX Runtime eval matches the PyTorch eval: metrics within 0.5 accuracy points, raw
    head outputs within rtol 1e-3 / atol 1e-5, and the same decoded lanes."""
    pytest.importorskip("onnxruntime")
    from harness.evaluation import EvalConfig, run_eval

    common = dict(workload="lanes", checkpoint=run / "checkpoint.pt", cache_dir=cache)
    torch_eval = run_eval(EvalConfig(**common, out=tmp_path / "eval_torch"))
    ort_eval = run_eval(EvalConfig(**common, backend="onnxruntime", out=tmp_path / "eval_ort"))
    assert ort_eval["status"] == "ok", ort_eval.get("error")
    graph_input = ort_eval["onnx"]["inputs"][0]
    assert graph_input["shape"] == ["batch", 3, 160, 400]  # fixed crop size, dynamic batch
    for name in ("Accuracy", "F1", "drivable_IoU_mean"):
        assert abs(ort_eval["metrics"][name] - torch_eval["metrics"][name]) <= 0.005, name
    agree = ort_eval["raw_output_agreement"]
    assert [o["output"] for o in agree["outputs"]] == [
        "out.cpts_hm", "out.kpts_hm", "out.pts_offset", "out.int_offset", "out.drivable"]
    assert agree["within_tol"], agree["outputs"]
    assert agree["decoded"]["fraction_differ"] <= 0.05, agree["decoded"]


def test_trains_on_a_tusimple_root_without_masks(harness_run: Callable[..., dict[str, Any]],
                                                 tmp_path: Path) -> None:
    # `harness run lanes --data ROOT --steps 10` on a root it has never seen: another seed,
    # another frame size, no drivable/ folder (masks derived between the outermost lanes).
    from workloads.datasets.tusimple_synth import SynthSpec, write_synthetic_tusimple

    root = write_synthetic_tusimple(tmp_path / "data", SynthSpec(
        train_frames=8, test_frames=4, image_size=(960, 540), seed=11, with_masks=False))
    assert not (root / "drivable").exists()
    record = harness_run("lanes", data=root, steps=10, warmup_steps=0, out=tmp_path / "run")
    assert record["status"] == "ok", record.get("error")
    assert LANE_METRICS | IOU_METRICS <= set(record["metrics"])
    resolved = record["config"]["workload"]
    assert tuple(resolved["source_size"]) == (960, 540)
    assert resolved["drivable_source"] == "derived"
    assert set(record["data"]["from_data"]) == {"source_size", "drivable_source"}
    assert "0 of 12 frames have a mask file" in record["data"]["from_data"]["drivable_source"]
    official = _rescore(record, tmp_path / "run")
    assert record["metrics"]["Accuracy"] == pytest.approx(official["Accuracy"], abs=1e-9)


def test_runs_on_the_emulated_npu(harness_cache: Path, tmp_path: Path) -> None:
    # Device-agnostic workload code: a stray CPU tensor in device math fails here. In a
    # subprocess: the emulated device registers PrivateUse1 once per process, before any
    # backward (the autograd engine sizes its device queues at its first backward).
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    args = [sys.executable, "-m", "harness.cli", "run", "lanes", "--backend", "npu", "--emulate",
            "--steps", "2", "--warmup-steps", "0", "--out", str(tmp_path / "npu"),
            "--cache-dir", str(harness_cache), "--no-checkpoint"]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "npu" / "record.json").read_text())
    assert record["status"] == "ok", record.get("error")
    assert record["emulated"] is True and LANE_METRICS <= set(record["metrics"])
