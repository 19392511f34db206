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
