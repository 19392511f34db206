"""YOLOv3 end to end: train 30 steps, then `harness eval` on cpu, on the emulated npu and on
onnxruntime (after `harness export`) reproduces the run's final metrics; parity renders them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.evaluation import EvalConfig, run_eval
from tests.conftest import ROOT

pytest.importorskip("pycocotools")


def _harness(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # about 3 min alone on 2 cores; tests/test_eval.py covers the same on tiny
def test_yolov3_eval_on_cpu_emulated_npu_and_onnxruntime_matches_the_run(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    _harness("run", "yolov3", "--steps", "30", "--out", str(run), "--cache-dir", str(cache))
    trained = json.loads((run / "record.json").read_text())
    ckpt = run / "checkpoint.pt"

    cpu = run_eval(EvalConfig(workload="yolov3", checkpoint=ckpt, out=tmp_path / "cpu",
                              cache_dir=cache))
    _harness("eval", "yolov3", "--checkpoint", str(ckpt), "--backend", "npu", "--emulate",
             "--out", str(tmp_path / "npu"), "--cache-dir", str(cache))
    npu = json.loads((tmp_path / "npu" / "record.json").read_text())
    for rec in (cpu, npu):
        assert rec["status"] == "ok" and rec["kind"] == "eval"
        for name, value in trained["metrics"].items():
            assert abs(rec["metrics"][name] - value) < 1e-4, (rec["backend"], name)
    tp = cpu["throughput"]
    assert tp["timing_split"] == "forward_for_eval+postprocess"
    assert tp["forward_s_p50"] > 0 and tp["postprocess_s_p50"] > 0
    assert tp["samples_per_s"] > 0 and tp["latency_s_p90"] >= tp["latency_s_p50"]
    if cpu.get("predictions"):  # the workload's COCO results file, relative to the eval folder
        assert (tmp_path / "cpu" / cpu["predictions"]["path"]).is_file()

    onnx_path = tmp_path / "yolov3.onnx"
    out = _harness("export", "yolov3", "--checkpoint", str(ckpt), "--format", "onnx",
                   "--out", str(onnx_path), "--cache-dir", str(cache)).stdout
    assert "onnx.checker ok" in out and onnx_path.is_file()
    ort = run_eval(EvalConfig(workload="yolov3", checkpoint=ckpt, backend="onnxruntime",
                              onnx=onnx_path, out=tmp_path / "ort", cache_dir=cache,
                              agreement_batches=2))
    for name, value in cpu["metrics"].items():
        assert abs(ort["metrics"][name] - value) < 1e-4, name
    agree = ort["raw_output_agreement"]
    assert [o["output"] for o in agree["outputs"]] == ["out.0", "out.1", "out.2"]  # 3 levels
    assert agree["within_tol"], agree["outputs"]
    assert agree["decoded"]["fraction_differ"] <= 0.02

    pytest.importorskip("pandas")
    # parity compares records of one kind: the eval records side by side.
    table = _harness("parity", str(tmp_path / "cpu"), str(tmp_path / "npu"), "--no-fail").stdout
    assert "| AP50 |" in table and "| npu |" in table  # the emulated npu's backend column
    table = _harness("parity", str(tmp_path / "cpu"), str(tmp_path / "ort"), "--no-fail").stdout
    assert "| AP50 |" in table and "onnxruntime" in table and "Raw-output agreement" in table
