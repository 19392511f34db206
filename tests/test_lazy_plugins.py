"""Workloads and backends are declared by name (built in, or entry points of the groups
harness.workloads / harness.backends) and imported only when used."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from harness import plugins
from harness.plugins import PluginLoadError

REPO = Path(__file__).resolve().parent.parent


def test_using_one_backend_imports_that_plugin_only() -> None:
    script = """
import sys
from harness import plugins
plugins.get_backend("cpu")
print("LOADED", sorted(m for m in sys.modules if m.startswith(("workloads.", "backends."))))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=300, env=dict(os.environ, HARNESS_PLUGINS=""))
    assert "LOADED ['backends.cpu']" in out.stdout, out.stderr


def test_every_builtin_name_is_what_its_plugin_provides() -> None:
    assert set(plugins.workloads()) >= set(plugins.BUILTIN_WORKLOADS)
    assert set(plugins.backends()) >= set(plugins.BUILTIN_BACKENDS)
    for name, module in plugins.BUILTIN_WORKLOADS.items():
        assert plugins.get_workload(name).__module__.startswith(module), name
    for name, module in plugins.BUILTIN_BACKENDS.items():
        assert plugins.get_backend(name).__module__.startswith(module), name


def _entry_points(extra: dict[str, list[metadata.EntryPoint]]) -> Any:
    real = metadata.entry_points

    def entry_points(**kw: Any) -> Any:
        return [*real(**kw), *extra.get(kw.get("group", ""), [])]

    return entry_points


def test_third_party_names_come_from_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_PLUGINS", raising=False)
    ep = metadata.EntryPoint("tiny", "tests.tiny_workload", "harness.workloads")
    monkeypatch.setattr(plugins.metadata, "entry_points",
                        _entry_points({"harness.workloads": [ep]}))
    plugins.get_plugin_manager.cache_clear()
    assert plugins.catalog("workload")["tiny"] is None  # named, not imported for it
    assert plugins.get_workload("tiny").name == "tiny"
    assert plugins.get_plugin_manager().has_plugin("tests.tiny_workload")


def test_a_declared_name_its_plugin_lacks_or_two_claims_are_errors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_PLUGINS", raising=False)
    wrong = metadata.EntryPoint("spelled_wrong", "tests.tiny_workload", "harness.workloads")
    clash = metadata.EntryPoint("yolov3", "tests.tiny_workload", "harness.workloads")
    monkeypatch.setattr(plugins.metadata, "entry_points",
                        _entry_points({"harness.workloads": [wrong]}))
    plugins.get_plugin_manager.cache_clear()
    with pytest.raises(PluginLoadError, match="tests.tiny_workload is declared to provide "
                                              "workload 'spelled_wrong' but does not"):
        plugins.get_workload("spelled_wrong")
    monkeypatch.setattr(plugins.metadata, "entry_points",
                        _entry_points({"harness.workloads": [clash]}))
    with pytest.raises(PluginLoadError, match="two plugins provide workload 'yolov3'"):
        plugins.catalog("workload")
