from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fake_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import plugins

    monkeypatch.setenv("HARNESS_PLUGINS", "tests.tiny_workload,tests.fake_plugins")
    plugins.get_plugin_manager.cache_clear()


def test_unavailable_backend_exits_3_with_the_reason(capsys, tmp_path: Path) -> None:
    assert main(["run", "tiny", "--backend", "ghost", "--out", str(tmp_path / "r")]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ghost_runtime is not installed" in err
    assert not (tmp_path / "r").exists()


def test_missing_extra_names_the_extra(capsys) -> None:
    assert main(["run", "needs_extra"]) == 2
    err = capsys.readouterr().err
    assert "no_such_module_for_tests" in err and "perception-harness[needs-extra]" in err


def test_list_says_why_a_backend_is_unavailable(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ghost  unavailable: ghost_runtime is not installed" in out


def test_pytest_session_stops_at_once_on_an_unavailable_backend(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_x():\n    assert True\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path),
         "--backend", "ghost", "-q", "--rootdir", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "ghost_runtime is not installed" in out and "passed" not in out
