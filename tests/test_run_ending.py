"""Issue 9 item 5: every finishing step of a run is guarded, so the record is always written
with the true status and the first error, and teardown still happens."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backends.cpu import CPUBackend
from harness import hookimpl, plugins
from harness.config import RunConfig
from harness.runner import execute


class StickyDevice:
    """Once `armed`, every synchronize() raises (a sticky device error)."""

    def __init__(self) -> None:
        self.armed = False
        self.closed = 0

    @hookimpl
    def harness_step_end(self, run: Any, step: int) -> None:
        if step == run.total_steps:
            self.armed = True  # the next sync is the final window close


class RaisingObserver:
    @hookimpl
    def harness_run_end(self, run: Any, record: dict[str, Any]) -> None:
        raise ValueError("observer broke")


@pytest.fixture
def sticky(monkeypatch: pytest.MonkeyPatch) -> StickyDevice:
    state = StickyDevice()

    def synchronize(self: CPUBackend) -> None:
        if state.armed:
            raise RuntimeError("sticky device error: illegal memory access")

    def close(self: CPUBackend) -> None:
        state.closed += 1

    monkeypatch.setattr(CPUBackend, "synchronize", synchronize)
    monkeypatch.setattr(CPUBackend, "close", close)
    plugins.get_plugin_manager().register(state, name="sticky")
    return state


def read(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "run" / "record.json").read_text())


def test_raising_synchronize_and_observer_still_write_the_record(tmp_path: Path,
                                                                 sticky: StickyDevice) -> None:
    plugins.get_plugin_manager().register(RaisingObserver(), name="raising")
    with pytest.raises(RuntimeError, match="sticky device error"):
        execute(RunConfig(workload="tiny", steps=4, warmup_steps=1, out=tmp_path / "run"))
    record = read(tmp_path)
    assert record["status"] == "failed"
    assert "sticky device error" in record["error"]
    assert any("observer broke" in e for e in record["later_errors"])
    assert record["duration_s"] is not None and len(record["losses"]) == 1
    assert record["throughput"]["timed_steps"] == 3  # what was measured is kept
    assert sticky.closed == 1  # the backend was still closed


def test_an_observer_failing_at_run_end_fails_a_good_run_on_disk(tmp_path: Path) -> None:
    plugins.get_plugin_manager().register(RaisingObserver(), name="raising")
    with pytest.raises(Exception, match="observer broke"):  # plugins may name the plugin
        execute(RunConfig(workload="tiny", steps=3, out=tmp_path / "run"))
    record = read(tmp_path)
    assert record["status"] == "failed" and "harness_run_end observers" in record["error"]
    assert record["metrics"]["accuracy"] > 0  # the run's results are all there
