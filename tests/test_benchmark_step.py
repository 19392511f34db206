"""harness.benchmark: one synchronized training step under pytest-benchmark's fixture."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.benchmark import benchmark_training_step, prepare_training_step

pytest.importorskip("pytest_benchmark")
ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_fixture_times_a_training_step(benchmark: Any, tmp_path: Path) -> None:
    benchmark_training_step(benchmark, "tiny", "cpu", "fp32", rounds=3, warmup_rounds=1,
                            cache_dir=tmp_path)
    info = benchmark.extra_info
    assert (info["workload"], info["backend"], info["device"]) == ("tiny", "cpu", "cpu")
    assert info["samples_per_step"] == 16
    if not benchmark.disabled:  # --benchmark-disable runs the step once, without stats
        assert benchmark.stats.stats.rounds == 3


def test_step_really_trains(tmp_path: Path) -> None:
    """The closure is the runner's step (autocast, backward, optimizer): weights move."""
    prepared = prepare_training_step("tiny", "cpu", "bf16", cache_dir=tmp_path, batches=2)
    before = [p.detach().clone() for p in prepared.model.parameters()]
    try:
        prepared.step()
        prepared.step()
    finally:
        prepared.close()
    after = list(prepared.model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=False))
    assert prepared.info["precision"] == "bf16"


def test_pytest_workloads_benchmark_only(tmp_path: Path) -> None:
    """`pytest workloads/test_benchmarks.py --benchmark-only` times the tiny workload."""
    env = {**os.environ, "HARNESS_PLUGINS": "tests.tiny_workload",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    report = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "workloads/test_benchmarks.py", "-k", "tiny", "-q",
         "--benchmark-only", f"--benchmark-json={report}", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    import json

    bench = json.loads(report.read_text())["benchmarks"]
    assert [b["extra_info"]["workload"] for b in bench] == ["tiny"]
    assert bench[0]["stats"]["rounds"] == 5
