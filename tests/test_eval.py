"""`harness eval`: weights in, val metrics + inference speed out, as a record of kind "eval".

On the tiny workload (seconds): metrics equal the training run's final evaluation, on the CPU
and on the emulated npu; mismatching checkpoints are usage errors naming the keys; a crafted
pickle is refused without running; failures still write the record.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from harness.config import RunConfig
from harness.errors import UsageError
from harness.evaluation import EvalConfig, run_eval
from harness.runner import execute
from harness.safe_load import UnsafeCheckpoint, load_checkpoint
from tests.conftest import ROOT, harness_cmd


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with its checkpoint.pt and final metrics."""
    from harness import plugins

    out = tmp_path_factory.mktemp("tiny-run")
    before = os.environ.get("HARNESS_PLUGINS")
    os.environ["HARNESS_PLUGINS"] = "tests.tiny_workload"
    plugins.get_plugin_manager.cache_clear()
    try:
        execute(RunConfig(workload="tiny", steps=8, out=out, log_interval=4))
    finally:
        if before is None:
            os.environ.pop("HARNESS_PLUGINS", None)
        else:
            os.environ["HARNESS_PLUGINS"] = before
        plugins.get_plugin_manager.cache_clear()
    return out


def _eval(run_dir: Path, out: Path, **kw: object) -> dict:
    return run_eval(EvalConfig(workload="tiny", checkpoint=run_dir / "checkpoint.pt", out=out,
                               **kw))  # type: ignore[arg-type]


def test_eval_reproduces_the_runs_final_metrics(trained: Path, tmp_path: Path) -> None:
    train_rec = json.loads((trained / "record.json").read_text())
    rec = _eval(trained, tmp_path / "e", batch_size=32)
    assert rec["kind"] == "eval" and rec["status"] == "ok" and rec["scale"] == "smoke"
    for k, v in train_rec["metrics"].items():
        assert abs(rec["metrics"][k] - v) < 1e-4, k
    on_disk = json.loads((tmp_path / "e" / "record.json").read_text())
    assert on_disk["metrics"] == rec["metrics"] and on_disk["backend"] == "cpu"
    tp = rec["throughput"]
    # 256 val samples in batches of 32: 2 warmup batches, 6 timed ones.
    assert tp["batch_size"] == 32 and tp["warmup_batches"] == 2 and tp["timed_batches"] == 6
    assert tp["timed_samples"] == 192 and tp["samples_per_s"] > 0
    assert 0 < tp["latency_s_p50"] <= tp["latency_s_p90"]
    assert tp["timing_split"].startswith("predict")  # tiny has no forward/postprocess split
    assert rec["memory"]["host_peak_rss_bytes"] > 0
    assert rec["checkpoint"]["step"] == 8 and rec["checkpoint"]["config_checked"] is True
    assert rec["model"]["params"] == 8 * 3 + 3


def test_eval_on_the_emulated_npu_matches(trained: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HARNESS_PLUGINS": "tests.tiny_workload", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(harness_cmd("eval", "tiny", "--checkpoint", str(trained / "checkpoint.pt"),
                                      "--backend", "npu", "--emulate", "--out", str(tmp_path / "n")),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((tmp_path / "n" / "record.json").read_text())
    train_rec = json.loads((trained / "record.json").read_text())
    assert rec["emulated"] is True and rec["backend"] == "npu" and rec["kind"] == "eval"
    assert rec["throughput"]["meaningful"] is False and rec["memory"]["meaningful"] is False
    for k, v in train_rec["metrics"].items():
        assert abs(rec["metrics"][k] - v) < 1e-4, k


def test_checkpoint_of_another_preset_names_the_keys(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"features: checkpoint 8, here 32"):
        _eval(trained, tmp_path / "x", scale="full")
    assert not (tmp_path / "x").exists()  # refused before anything was written
    # Without --scale the preset is inferred; --set of a model field contradicting the
    # weights is caught when they are loaded, naming the tensors.
    with pytest.raises(UsageError, match=r"shape \(checkpoint vs model\): weight"):
        _eval(trained, tmp_path / "y", overrides=("features=4",))


def test_checkpoint_of_another_workload_exits_2(trained: Path, tmp_path: Path) -> None:
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    state["workload"] = "yolov3"
    torch.save(state, tmp_path / "other.pt")
    env = {**os.environ, "HARNESS_PLUGINS": "tests.tiny_workload", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(harness_cmd("eval", "tiny", "--checkpoint", str(tmp_path / "other.pt")),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "holds a 'yolov3' model, not 'tiny' (mismatching key: workload)" in proc.stderr


class _RunsCode:
    """Unpickling this calls a function of the attacker's choice (here: create a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"weight": torch.zeros(3, 8)}, "payload": _RunsCode(marker)}, evil)
    # The file really is armed: an unrestricted load runs the payload.
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeCheckpoint, match=r"refused: .*\(it references \w+\).*can run code"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_bare_state_dict_loads_and_a_wrong_one_is_named(trained: Path, tmp_path: Path) -> None:
    state = torch.load(trained / "checkpoint.pt", weights_only=True)["model"]
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "bare.pt")  # DDP names
    rec = run_eval(EvalConfig(workload="tiny", checkpoint=tmp_path / "bare.pt",
                              out=tmp_path / "b"))
    assert rec["status"] == "ok" and rec["checkpoint"]["layout"] == "state_dict"
    assert rec["checkpoint"]["config_checked"] is False
    torch.save({"weight": torch.zeros(3, 8)}, tmp_path / "partial.pt")
    with pytest.raises(UsageError, match="missing: bias"):
        run_eval(EvalConfig(workload="tiny", checkpoint=tmp_path / "partial.pt",
                            out=tmp_path / "p"))


def test_a_failing_eval_still_writes_its_record(trained: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.tiny_workload import TinyWorkload

    def broken(self: TinyWorkload, predictions: list) -> dict:
        raise RuntimeError("metric exploded")

    monkeypatch.setattr(TinyWorkload, "evaluate", broken)
    with pytest.raises(RuntimeError, match="metric exploded"):
        _eval(trained, tmp_path / "f")
    rec = json.loads((tmp_path / "f" / "record.json").read_text())
    assert rec["status"] == "failed" and "metric exploded" in rec["error"]
    assert rec["kind"] == "eval" and rec["throughput"]["timed_batches"] > 0


def test_forward_and_postprocess_are_timed_apart_where_the_workload_splits(
        trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from tests.tiny_workload import TinyWorkload

    def forward_for_eval(self: TinyWorkload, model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        return model(batch[0])

    def postprocess(self: TinyWorkload, model: torch.nn.Module, out: torch.Tensor,
                    batch: tuple) -> list:
        time.sleep(0.3)  # a decoding step far slower than the forward, even on a busy host
        return list(zip(out.argmax(1).tolist(), batch[1].tolist()))

    monkeypatch.setattr(TinyWorkload, "forward_for_eval", forward_for_eval, raising=False)
    monkeypatch.setattr(TinyWorkload, "postprocess", postprocess, raising=False)
    rec = _eval(trained, tmp_path / "s", batch_size=64)
    tp = rec["throughput"]
    assert tp["timing_split"] == "forward_for_eval+postprocess"
    assert tp["postprocess_s_p50"] >= 0.3 and tp["forward_s_p50"] < tp["postprocess_s_p50"]
    assert tp["latency_s_p50"] >= tp["postprocess_s_p50"]
    train_rec = json.loads((trained / "record.json").read_text())
    assert rec["metrics"] == pytest.approx(train_rec["metrics"], abs=1e-4)


def test_eval_cli_usage_errors(tmp_path: Path) -> None:
    proc = subprocess.run(harness_cmd("eval", "tiny", "--checkpoint", str(tmp_path / "none.pt")),
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HARNESS_PLUGINS": "tests.tiny_workload",
                               "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "no checkpoint at" in proc.stderr
