from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main


def test_plugin_options_and_lifecycle_hooks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness import plugins

    monkeypatch.setenv("HARNESS_PLUGINS", "tests.tiny_workload,tests.observer_plugin")
    plugins.get_plugin_manager.cache_clear()
    out = tmp_path / "run"
    assert main(["run", "tiny", "--steps", "4", "--tag", "nightly", "--out", str(out)]) == 0
    events = json.loads((out / "observer.json").read_text())
    assert events[0] == ["configure", "nightly"]
    assert events[1] == ["run_start", 4]
    assert [e[1] for e in events if e[0] == "step_end"] == [1, 2, 3, 4]
    assert events[-2] == ["eval_end", ["accuracy", "error"]]
    assert events[-1] == ["run_end", "ok"]
