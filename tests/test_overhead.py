"""benchmarks/overhead.py: the harness's samples/s against a bare hand-written loop."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "overhead.py"


def _overhead(tmp_path: Path, *args: str, timeout: float) -> dict:
    out = tmp_path / "overhead.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--cache-dir", str(tmp_path),
                           "--json", str(out)], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_overhead_script_times_the_harness_and_the_bare_loop_on_tiny(tmp_path: Path) -> None:
    result = _overhead(tmp_path, "tiny", "--steps", "12", "--warmup", "2", "--repeats", "2",
                       timeout=300)
    assert len(result["harness_samples_per_s"]) == len(result["bare_samples_per_s"]) == 2
    assert all(v > 0 for v in result["harness_samples_per_s"] + result["bare_samples_per_s"])
    assert result["ratio"] == pytest.approx(result["harness_median"] / result["bare_median"])


def test_overhead_script_refuses_a_warmup_as_long_as_the_run(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "tiny", "--steps", "5", "--warmup", "5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--warmup" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("workload, steps", [("yolov3", 25), ("bevdepth", 15)])
def test_harness_overhead_on_smoke_workloads(tmp_path: Path, workload: str, steps: int) -> None:
    """The README's ratio (goal >= 0.98). The floor here is lower: on a shared 2-core machine
    repeated medians still move by several percent."""
    result = _overhead(tmp_path, workload, "--steps", str(steps), "--warmup", "5",
                       "--repeats", "3", timeout=3600)
    print(json.dumps(result))
    assert result["ratio"] >= 0.9, result
