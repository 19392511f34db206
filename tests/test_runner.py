from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.errors import Diverged, UsageError
from harness.records import SCHEMA
from harness.runner import execute


def run_tiny(tmp_path: Path, **kw: object) -> dict:
    kw.setdefault("out", tmp_path / "run")
    return execute(RunConfig(workload="tiny", **kw))


def test_tiny_run_trains_and_writes_a_complete_record(tmp_path: Path) -> None:
    record = run_tiny(tmp_path, steps=40, log_interval=10)
    on_disk = json.loads((tmp_path / "run" / "record.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["schema"] == SCHEMA
    for key in ("workload", "scale", "config", "backend", "mode", "precision", "strategy",
                "world_size", "seed", "metrics", "throughput", "memory", "losses", "env",
                "started_at", "duration_s", "emulated"):
        assert key in on_disk, key
    assert record["metrics"]["accuracy"] > 0.9
    tp = record["throughput"]
    assert tp["optimizer_steps"] == 40 and tp["timed_steps"] + tp["warmup_steps"] == 40
    assert tp["samples_per_s"] > 0 and len(tp["step_times_s"]) == tp["timed_steps"]
    assert record["memory"]["host_peak_rss_bytes"] > 0
    assert [row["step"] for row in record["losses"]] == [10, 20, 30, 40]
    assert {"loss", "loss_cls", "loss_reg", "grad_norm", "lr"} <= set(record["losses"][0])
    assert record["env"]["torch"] and record["config"]["workload"]["batch_size"] == 16
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert (tmp_path / "run" / "log.jsonl").read_text().count("\n") == 4


def test_untrained_is_worse_than_trained(tmp_path: Path) -> None:
    # The workload's metric really responds to training (the gate means something).
    untrained = run_tiny(tmp_path, steps=1, overrides=("lr=0",), out=tmp_path / "a")
    trained = run_tiny(tmp_path, steps=40, out=tmp_path / "b")
    assert trained["metrics"]["accuracy"] > untrained["metrics"]["accuracy"] + 0.3


def test_grad_accum_counts_micro_and_optimizer_steps(tmp_path: Path) -> None:
    record = run_tiny(tmp_path, steps=6, grad_accum=3, batch_size=8)
    tp = record["throughput"]
    assert tp["optimizer_steps"] == 6 and tp["micro_steps"] == 18
    # FPS counts every micro-batch's samples in the timed window.
    assert tp["samples_per_s"] == pytest.approx(
        8 * 3 * tp["timed_steps"] / tp["window_s"], rel=1e-6)


def test_nan_stops_the_run_naming_step_terms_and_grad_norm(tmp_path: Path) -> None:
    with pytest.raises(Diverged) as exc:
        run_tiny(tmp_path, steps=30, overrides=("nan_at_step=12",))
    message = str(exc.value)
    assert "step 12" in message and "loss_cls=nan" in message and "grad_norm" in message
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "diverged" and "step 12" in record["error"]


def test_overrides_and_direct_options_reach_the_workload_config(tmp_path: Path) -> None:
    record = run_tiny(tmp_path, steps=2, batch_size=4, overrides=("lr=0.05", "features=4"))
    wcfg = record["config"]["workload"]
    assert wcfg["batch_size"] == 4 and wcfg["lr"] == 0.05 and wcfg["features"] == 4


def test_epochs_sets_steps_from_the_loader(tmp_path: Path) -> None:
    record = run_tiny(tmp_path, epochs=2, batch_size=64)  # 512 samples -> 8 steps/epoch
    assert record["throughput"]["optimizer_steps"] == 16


def test_bf16_autocast_runs_on_cpu(tmp_path: Path) -> None:
    record = run_tiny(tmp_path, steps=10, precision="bf16")
    assert record["status"] == "ok" and record["precision"] == "bf16"


def test_usage_errors_come_before_any_record(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown workload .nosuch. \(valid: .*tiny"):
        execute(RunConfig(workload="nosuch", out=tmp_path / "x"))
    with pytest.raises(UsageError, match="no scale 'huge'"):
        execute(RunConfig(workload="tiny", scale="huge", out=tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_crash_inside_the_run_writes_a_failed_record(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="fewer samples than one batch"):
        run_tiny(tmp_path, batch_size=100000)
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "failed" and "fewer samples" in record["error"]


def test_eval_interval_evaluates_during_training_and_at_the_end(tmp_path: Path) -> None:
    record = run_tiny(tmp_path, steps=30, eval_interval=10)
    assert [e["step"] for e in record["evals"]] == [10, 20, 30]
    assert record["metrics"] == record["evals"][-1]["metrics"]


def test_deterministic_runs_repeat_exactly(tmp_path: Path) -> None:
    a = run_tiny(tmp_path, steps=12, deterministic=True, seed=3, out=tmp_path / "a")
    b = run_tiny(tmp_path, steps=12, deterministic=True, seed=3, out=tmp_path / "b")
    assert [r["loss"] for r in a["losses"]] == [r["loss"] for r in b["losses"]]


def test_compile_mode_on_cpu_trains(tmp_path: Path) -> None:
    # torch.compile (inductor, C++ codegen) through the backend's prepare_model; the
    # compile happens inside the warmup steps, outside the timed window.
    record = run_tiny(tmp_path, steps=10, mode="compile")
    assert record["status"] == "ok" and record["mode"] == "compile"
    assert record["metrics"]["accuracy"] > 0.9
