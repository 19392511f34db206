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
    ghost = next(line for line in out.splitlines() if line.strip().startswith("ghost "))
    assert "unavailable: ghost_runtime is not installed" in ghost
    assert "--emulate" not in ghost  # ghost has no emulated device: no false hint


def test_emulate_is_suggested_for_unavailable_npu_and_hpu(capsys, tmp_path: Path) -> None:
    from harness import plugins

    if plugins.get_backend("npu").probe().available:
        pytest.skip("npu is available (real, or emulated earlier in this process)")
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("npu", "hpu"):
        line = next(x for x in lines if x.strip().startswith(f"{name} "))
        if "unavailable" in line:
            assert "try --emulate for a CPU-emulated dry run" in line
    assert main(["run", "tiny", "--backend", "npu", "--out", str(tmp_path / "r")]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "backend npu is unavailable" in err
    assert err.endswith("for a portability dry run without the hardware add --emulate")


def test_run_help_lists_workloads_backends_and_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "workloads:" in out and "  tiny " in out and "backends:" in out
    assert "ghost" in out and "unavailable" in out
    assert out.count("  harness run ") >= 3 and "exit codes:" in out
    for flag in ("--no-eval", "--no-checkpoint", "--emulate", "--deepspeed", "--set"):
        assert flag in out


def test_top_level_help_is_for_users_and_loads_no_plugin(capsys) -> None:
    from harness import plugins

    plugins.get_plugin_manager.cache_clear()
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Benchmark perception training on any accelerator" in out and "exit codes:" in out
    assert plugins.get_plugin_manager.cache_info().currsize == 0


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
