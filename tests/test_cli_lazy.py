"""The CLI starts without torch or plugins, and a broken plugin breaks only the verbs that
need plugins (list, run), where it is a one-line error naming it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import plugins
from harness.plugins import PluginHookError, PluginLoadError
from harness.records import SCHEMA

REPO = Path(__file__).resolve().parent.parent
BROKEN = "raise RuntimeError('this plugin is broken on purpose')\n"
HEADER = ("scale,kind,config,backend,device,precision,weights_dtype,mode,world_size,metric,"
          "value,tolerance,tolerance_kind,direction,source\n")


def _record(folder: Path, accuracy: float, seed: int) -> Path:
    rec = {"schema": SCHEMA, "workload": "tiny", "scale": "smoke", "backend": "cpu",
           "precision": "fp32", "mode": "eager", "world_size": 1, "status": "ok", "seed": seed,
           "emulated": False, "metrics": {"accuracy": accuracy}, "env": {"device_name": "x"},
           "throughput": {"samples_per_s": 100.0, "timed_steps": 20,
                          "step_times_s": [0.01 + 0.0001 * (i % 7) for i in range(20)]},
           "memory": {"host_peak_rss_bytes": 1e8}, "losses": [], "config": {"run": {}}}
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(rec))
    return folder


@pytest.fixture()
def workspace(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "broken_plugin.py").write_text(BROKEN)
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "tiny.csv").write_text(
        HEADER + "smoke,train,,cpu,x,fp32,fp32,eager,1,accuracy,0.9,0.05,abs,higher,test\n")
    return {"root": tmp_path, "ref": ref, "a": _record(tmp_path / "a", 0.9, 0),
            "b": _record(tmp_path / "b", 0.89, 1)}


def _harness(args: list[str], ws: dict[str, Path], plugin: str = "broken_plugin"
             ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HARNESS_PLUGINS=plugin,
               PYTHONPATH=os.pathsep.join([str(ws["root"] / "mods"), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ws["root"], timeout=300)


def test_report_verbs_and_help_survive_a_broken_plugin(workspace: dict[str, Path]) -> None:
    ws, a, b, ref = workspace, str(workspace["a"]), str(workspace["b"]), str(workspace["ref"])
    assert _harness(["--help"], ws).returncode == 0
    check = _harness(["check", a, "--reference-dir", ref], ws)
    assert check.returncode == 0, check.stderr
    assert "result: PASS" in check.stdout
    pytest.importorskip("pandas")
    parity = _harness(["parity", a, b, "--reference-dir", ref], ws)
    assert parity.returncode == 0, parity.stderr
    assert "| accuracy |" in parity.stdout
    pytest.importorskip("scipy")
    gate = _harness(["gate", "--baseline", a, b], ws)
    assert gate.returncode == 0, gate.stderr + gate.stdout

    run = _harness(["run", "tiny", "--steps", "1"], ws)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert "plugin 'broken_plugin' (HARNESS_PLUGINS) failed to import" in lines[0]
    assert _harness(["list"], ws).returncode == 2


def test_check_parity_gate_and_help_import_neither_torch_nor_a_workload(
        workspace: dict[str, Path]) -> None:
    pytest.importorskip("pandas")
    pytest.importorskip("scipy")
    a, b, ref = str(workspace["a"]), str(workspace["b"]), str(workspace["ref"])
    script = f"""
import sys
from harness.cli import main
codes = [main(["check", {a!r}, "--reference-dir", {ref!r}]),
         main(["parity", {a!r}, {b!r}, "--reference-dir", {ref!r}]),
         main(["gate", "--baseline", {a!r}, {b!r}])]
try:
    main(["--help"])
except SystemExit as exc:
    codes.append(exc.code)
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("workloads", "backends")))
print("RESULT", codes, heavy)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=300, env=dict(os.environ, HARNESS_PLUGINS=""))
    result = next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    assert result == "RESULT [0, 0, 0, 0] []", out.stderr


def test_sys_exit_at_import_is_a_plugin_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "exiting_plugin.py").write_text("import sys\nsys.exit(7)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HARNESS_PLUGINS", "exiting_plugin")
    plugins.get_plugin_manager.cache_clear()
    try:
        with pytest.raises(PluginLoadError, match=r"plugin 'exiting_plugin'.*SystemExit\(7\)"):
            plugins.get_plugin_manager()
    finally:
        monkeypatch.delenv("HARNESS_PLUGINS")
        plugins.get_plugin_manager.cache_clear()


def test_a_raising_hook_names_plugin_and_hook(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "raising_hook_plugin.py").write_text(
        "from harness import hookimpl\n\n@hookimpl\ndef harness_workloads():\n"
        "    raise KeyError('oops')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HARNESS_PLUGINS", "raising_hook_plugin")
    plugins.get_plugin_manager.cache_clear()
    try:
        with pytest.raises(PluginHookError,
                           match="plugin 'raising_hook_plugin' hook harness_workloads raised "
                                 "KeyError"):
            plugins.workloads()
        from harness.cli import main

        assert main(["list"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "raising_hook_plugin" in err[0]
    finally:
        monkeypatch.delenv("HARNESS_PLUGINS")
        plugins.get_plugin_manager.cache_clear()


def _modules_after(argv: list[str]) -> list[str]:
    """torch and the workload/backend modules imported by `harness ARGV` in a fresh process."""
    script = f"""
import sys
from harness.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = [m for m in sys.modules if m == "torch" or m.startswith(("workloads", "backends"))]
print("HEAVY", sorted(heavy))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=300, env=dict(os.environ, HARNESS_PLUGINS=""))
    line = next(x for x in out.stdout.splitlines() if x.startswith("HEAVY"))
    return eval(line.split(" ", 1)[1])  # noqa: S307 - our own printed list


def test_list_imports_neither_torch_nor_any_plugin() -> None:
    assert _modules_after(["list"]) == []


def test_run_help_imports_no_workload_or_backend() -> None:
    assert [m for m in _modules_after(["run", "--help"]) if m != "torch"] == []


def test_run_help_imports_no_torch() -> None:
    assert "torch" not in _modules_after(["run", "--help"])


def test_eval_help_imports_no_torch() -> None:
    """EvalConfig declares eval's options beside RunConfig, torch-free."""
    assert "torch" not in _modules_after(["eval", "--help"])


def test_main_quiets_third_party_console_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cli import main

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("KINETO_LOG_LEVEL", "4")  # the user's own choice is kept
    assert main(["list"]) == 0
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["KINETO_LOG_LEVEL"] == "4"
