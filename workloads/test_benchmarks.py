"""Per-workload training-step benchmarks: `pytest workloads --backend B --benchmark-only`.

Skipped in ordinary test runs (they time, they do not check), and for workloads whose
optional extra is not installed. Options --backend/--precision/--mode/--emulate come from
harness/pytest_plugin.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import plugins
from harness.errors import MissingExtra

pytest.importorskip("pytest_benchmark")


@pytest.mark.parametrize("workload", sorted(plugins.workloads()))
def test_training_step(benchmark: object, request: pytest.FixtureRequest, workload: str,
                       backend_name: str, precision: str, harness_mode: str,
                       harness_cache: Path) -> None:
    if not request.config.getoption("benchmark_only", default=False):
        pytest.skip("timing only: run with --benchmark-only")
    from harness.benchmark import benchmark_training_step
    from harness.runner import check_requirements

    try:
        check_requirements(plugins.get_workload(workload))
    except MissingExtra as exc:
        pytest.skip(str(exc))
    benchmark_training_step(benchmark, workload, backend_name, precision, harness_mode,
                            emulate=request.config.getoption("--emulate"),
                            cache_dir=harness_cache, rounds=5, warmup_rounds=1)
