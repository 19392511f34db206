"""benchmarks/device_check.sh --dry-run: every command of the GPU check resolves, none runs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _dry_run(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable})


def test_dry_run_resolves_a_run_per_registered_full_workload_and_precision(tmp_path: Path) -> None:
    out = tmp_path / "check"
    proc = _dry_run(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    listing = json.loads((out / "list.json").read_text())
    full = [w["name"] for w in listing["workloads"] if "full" in w["presets"]]
    assert "yolov3" in full and "bevdepth" in full
    for name in full:
        for precision in ("fp32", "bf16"):
            assert (f"ok   harness run {name} --backend cuda --scale full --precision {precision}"
                    in proc.stdout), (name, precision)
    assert "tests collected" in proc.stdout and "dry run ok" in proc.stdout
    assert not (out / "records").exists() or not list((out / "records").iterdir())  # nothing ran


def test_dry_run_fails_on_a_command_the_harness_would_refuse(tmp_path: Path) -> None:
    proc = _dry_run(tmp_path / "check", "--precisions", "fp32 fp64")
    assert proc.returncode == 1
    assert "FAIL harness run yolov3 --backend cuda --scale full --precision fp64" in proc.stdout
    assert "dry run FAILED" in proc.stdout


def test_summary_computes_mfu_from_the_record_and_the_device_peak(tmp_path: Path) -> None:
    run = tmp_path / "records" / "yolov3-bf16"
    run.mkdir(parents=True)
    record = {"workload": "yolov3", "precision": "bf16", "status": "ok",
              "env": {"device_name": "NVIDIA H200"},
              "throughput": {"samples_per_s": 100.0, "step_time_s_p50": 0.16, "timed_steps": 20},
              "memory": {"device_peak_allocated_bytes": 3 * 2**30},
              "model": {"params": 61_900_000, "train_flops_per_sample": 2.0e12}}
    (run / "record.json").write_text(json.dumps(record))
    unknown = tmp_path / "records" / "bevdepth-fp32"
    unknown.mkdir()
    (unknown / "record.json").write_text(json.dumps(
        {**record, "workload": "bevdepth", "precision": "fp32", "model": {"params": 1}}))
    out = tmp_path / "summary.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_summary.py"),
                           str(tmp_path / "records"), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {r["workload"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    assert rows["yolov3"]["achieved_tflops"] == pytest.approx(200.0)
    assert rows["yolov3"]["mfu"] == pytest.approx(200.0 / 989.4)
    assert rows["yolov3"]["peak_alloc_gib"] == pytest.approx(3.0)
    assert rows["bevdepth"]["mfu"] is None  # no FLOP count: no MFU, never a guess
    assert "| yolov3 | bf16 | ok | 100.0 |" in out.read_text()
