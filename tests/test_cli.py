from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

from harness.cli import main
from tests.conftest import harness_cmd


def test_list_json_names_workloads_and_backends(capsys) -> None:
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {w["name"] for w in data["workloads"]}
    assert "tiny" in names
    cpu = next(b for b in data["backends"] if b["name"] == "cpu")
    assert cpu["available"] and "bf16" in cpu["precisions"]


def test_exit_codes_for_usage_errors(capsys, tmp_path: Path) -> None:
    assert main(["run", "nosuch"]) == 2
    assert "valid:" in capsys.readouterr().err
    assert main(["run", "tiny", "--backend", "nosuch"]) == 2
    assert "valid: cpu" in capsys.readouterr().err
    assert main(["run", "tiny", "--precision", "fp16", "--out", str(tmp_path / "a")]) == 2
    assert "fp16" in capsys.readouterr().err
    assert main(["run", "tiny", "--lazy", "--out", str(tmp_path / "b")]) == 2
    assert "lazy" in capsys.readouterr().err
    assert main(["run", "tiny", "--set", "nosuch=1"]) == 2
    assert main(["run", "tiny", "--bogus-flag"]) == 2


def test_run_ok_exit_zero_and_failed_exit_one(tmp_path: Path) -> None:
    assert main(["run", "tiny", "--steps", "5", "--out", str(tmp_path / "ok")]) == 0
    assert main(["run", "tiny", "--steps", "20", "--set", "nan_at_step=3",
                 "--out", str(tmp_path / "nan")]) == 1


def test_sigint_leaves_an_interrupted_record(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        harness_cmd("run", "tiny", "--steps", "100000", "--set", "sleep_s=0.01",
                    "--log-interval", "1", "--out", str(out)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    # Wait until training has really started (a log line), then interrupt.
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Epoch 0, iter 2/"):
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130  # interrupted (128 + SIGINT), run and eval alike
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "interrupted"
    assert record["throughput"]["optimizer_steps"] >= 2


def test_sigterm_also_leaves_an_interrupted_record(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        harness_cmd("run", "tiny", "--steps", "100000", "--set", "sleep_s=0.01",
                    "--log-interval", "1", "--out", str(out)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Epoch 0, iter 2/"):
            break
    proc.terminate()
    proc.communicate(timeout=60)
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]


def test_console_script_entry_point_works() -> None:
    out = subprocess.run(harness_cmd("--help"), capture_output=True, text=True)
    assert out.returncode == 0 and "run" in out.stdout


def test_nproc_two_runs_ddp_over_gloo(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = subprocess.run(harness_cmd("run", "tiny", "--nproc", "2", "--steps", "10",
                                      "--out", str(out)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "record.json").read_text())
    assert record["strategy"] == "ddp" and record["world_size"] == 2
    assert record["status"] == "ok" and record["metrics"]["accuracy"] > 0.8
    assert (out / "record.rank1.json").exists()


def test_readme_synopsis_names_every_run_flag() -> None:
    from harness.cli import build_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    synopsis = readme.split("## Command line", 1)[1].split("```", 2)[1]
    parser = build_parser(["run"])
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    own = [a for a in run._actions if a.dest not in run.get_default("_plugin_dests")]
    flags = {o for a in own for o in a.option_strings if o.startswith("--") and o != "--help"}
    missing = sorted(f for f in flags  # whole flags: --steps must not hide in --warmup-steps
                     if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", synopsis))
    assert not missing, f"README's `harness run` synopsis lacks {missing}"
