from __future__ import annotations

import sys
import types

import pytest

from harness import plugins
from harness.plugins import PluginLoadError


def test_builtin_backends_and_env_plugins_are_found() -> None:
    assert "cpu" in plugins.backends()
    assert "tiny" in plugins.workloads()


def test_broken_plugin_is_an_error_that_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_PLUGINS", "tests.no_such_plugin_module")
    plugins.get_plugin_manager.cache_clear()
    with pytest.raises(PluginLoadError, match="tests.no_such_plugin_module"):
        plugins.get_plugin_manager()


def test_unknown_hook_is_rejected_by_check_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import hookimpl

    mod = types.ModuleType("bad_hook_plugin")

    @hookimpl
    def harness_no_such_hook() -> None:  # a typo in a hook name must not pass silently
        pass

    mod.harness_no_such_hook = harness_no_such_hook  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bad_hook_plugin", mod)
    monkeypatch.setenv("HARNESS_PLUGINS", "bad_hook_plugin")
    plugins.get_plugin_manager.cache_clear()
    with pytest.raises(PluginLoadError, match="bad_hook_plugin"):
        plugins.get_plugin_manager()


def test_duplicate_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import hookimpl
    from tests.tiny_workload import TinyWorkload

    mod = types.ModuleType("dup_plugin")

    class Dup(TinyWorkload):
        pass

    @hookimpl
    def harness_workloads() -> list:
        return [Dup]

    mod.harness_workloads = harness_workloads  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dup_plugin", mod)
    monkeypatch.setenv("HARNESS_PLUGINS", "tests.tiny_workload,dup_plugin")
    plugins.get_plugin_manager.cache_clear()
    with pytest.raises(PluginLoadError, match="two plugins provide workload 'tiny'"):
        plugins.workloads()
