"""pytest plugin (entry point pytest11): `pytest workloads --backend npu` and friends.

Options choose the backend, precision and mode every workload test runs on. An unavailable
backend stops the session at once with one line (exit 3), not a wall of skips.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from harness.errors import EXIT_UNAVAILABLE, HarnessError
from harness.records import Record


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "perception-harness")
    group.addoption("--backend", default="cpu", help="backend the workload tests run on")
    group.addoption("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    group.addoption("--mode", default="", help="eager, lazy or compile (default: the backend's)")
    group.addoption("--emulate", action="store_true",
                    help="run npu/hpu tests on the CPU-emulated device")


def _selected(config: pytest.Config) -> tuple[str, str, str, bool]:
    return (config.getoption("--backend"), config.getoption("--precision"),
            config.getoption("--mode"), config.getoption("--emulate"))


def pytest_configure(config: pytest.Config) -> None:
    backend, precision, mode, emulate = _selected(config)
    if backend == "cpu" and not emulate and precision in ("fp32", "bf16") and mode in ("", "eager"):
        return  # the default: always available, nothing to import or probe
    from harness.config import RunConfig
    from harness.runner import prepare_backend

    try:
        prepare_backend(RunConfig(workload="-", backend=backend, mode=mode,
                                  precision=precision, emulate=emulate))
    except HarnessError as exc:
        pytest.exit(f"harness: {exc}", returncode=getattr(exc, "exit_code", EXIT_UNAVAILABLE))


@pytest.fixture(scope="session")
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--backend")


@pytest.fixture(scope="session")
def precision(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--precision")


@pytest.fixture(scope="session")
def harness_mode(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--mode")


@pytest.fixture(scope="session")
def harness_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic-data cache per test session (workloads write their data once)."""
    return tmp_path_factory.mktemp("harness-cache")


@pytest.fixture
def harness_run(request: pytest.FixtureRequest, tmp_path: Path,
                harness_cache: Path) -> Callable[..., Record]:
    """Run a workload on the session's backend/precision/mode; return its record.

    `harness_run("yolov3", steps=20, overrides=("input_size=128",))` — keyword arguments
    are RunConfig fields; the out folder defaults to a fresh tmp dir.
    """
    from harness.config import RunConfig
    from harness.runner import execute

    backend, precision, mode, emulate = _selected(request.config)
    counter = iter(range(1000))

    def run(workload: str, **kwargs: Any) -> Record:
        kwargs.setdefault("out", tmp_path / f"run{next(counter)}")
        kwargs.setdefault("cache_dir", harness_cache)
        kwargs.setdefault("backend", backend)
        kwargs.setdefault("precision", precision)
        kwargs.setdefault("mode", mode)
        kwargs.setdefault("emulate", emulate)
        if "overrides" in kwargs:
            kwargs["overrides"] = tuple(kwargs["overrides"])
        return execute(RunConfig(workload=workload, **kwargs))

    return run


def assert_passes_reference_rows(record: Record, table: str, scale: str = "smoke") -> None:
    """A workload test's accuracy gate: `harness check` of `record` against the reference
    rows of `scale` in `table` (reference_results/<table>.csv) passes. The rows are the one
    source of the numbers: tests, CI and users' `harness check` judge by the same figures."""
    from harness.checking import check_record
    from harness.reference import reference_dir

    result = check_record(record, reference_dir())
    assert result.match is not None, result.summary
    row = result.match.rows[0]
    assert Path(row.file).stem == table and row.scale == scale, result.match.describe()
    verdicts = [(v.metric, v.measured, v.row.value, v.row.band(), v.status)
                for v in result.verdicts]
    assert result.passed, (result.summary, verdicts)


def reference_floor(table: str, metric: str, scale: str = "smoke") -> float:
    """The lowest value the CPU training row of a higher-is-better metric accepts."""
    from harness.reference import load_table, reference_dir

    rows = [r for r in load_table(reference_dir() / f"{table}.csv") if r.scale == scale
            and r.kind == "train" and r.backend == "cpu" and r.metric == metric]
    assert len(rows) == 1, rows
    return rows[0].value - rows[0].band()
