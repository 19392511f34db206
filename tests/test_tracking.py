"""`harness run --track`: scalars read back from TensorBoard's event files and MLflow's local
store; a failing tracker (dead or silent server, missing package) is one warning, never a
failed or held-up run. (A real `mlflow server` is not started: mlflow-skinny has no server,
and the full package's takes tens of seconds.)"""
from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.tracking import tracker_names


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import plugins

    monkeypatch.setenv("HARNESS_PLUGINS", "tests.tiny_workload")
    monkeypatch.delenv("HARNESS_TRACK", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plugins.get_plugin_manager.cache_clear()


def _run(out: Path, *extra: str) -> int:
    return main(["run", "tiny", "--steps", "12", "--log-interval", "4", "--no-checkpoint",
                 "--out", str(out), *extra])


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("harness: warning")]


def test_tensorboard_and_mlflow_get_the_scalars(tiny: None, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert _run(out, "--track", "tensorboard,mlflow") == 0
    assert not _warnings(capsys.readouterr().err)
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["tracking"]["tensorboard"] == {"log_dir": "tb"}

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_cls", "train/grad_norm", "train/lr", "train/iter_time",
            "train/data_time", "train/samples_per_s", "eval/accuracy", "final/accuracy",
            "throughput/samples_per_s", "memory/host_peak_rss_bytes"} <= tags
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [4, 8, 12]
    assert [round(e.value, 4) for e in losses] == [round(r["loss"], 4) for r in record["losses"]]
    fps = events.Scalars("throughput/samples_per_s")[0].value
    assert fps == pytest.approx(record["throughput"]["samples_per_s"], rel=1e-5)

    mlflow = record["tracking"]["mlflow"]
    assert mlflow["tracking_uri"] == f"sqlite:///{tmp_path.resolve().as_posix()}/mlflow.db"
    client = MlflowClient(mlflow["tracking_uri"])
    run = client.get_run(mlflow["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert (params["workload"], params["backend"], params["precision"], params["mode"]) == (
        "tiny", "cpu", "fp32", "eager")
    assert params["git_sha"] == str(record["env"]["git_sha"]) and params["host"]
    assert run.data.metrics["final/accuracy"] == pytest.approx(record["metrics"]["accuracy"])
    history = client.get_metric_history(mlflow["run_id"], "train/loss")
    assert sorted(m.step for m in history) == [4, 8, 12]
    assert "record.json" in [a.path for a in client.list_artifacts(mlflow["run_id"])]


def test_a_dead_server_is_one_warning_and_the_record_is_complete(
        tiny: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    started = time.monotonic()
    assert _run(out, "--track", "mlflow", "--track-uri", "http://127.0.0.1:9") == 0
    assert time.monotonic() - started < 30
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "mlflow" in warnings[0] and "127.0.0.1:9" in warnings[0]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["metrics"]["accuracy"] > 0.5
    assert record["throughput"]["samples_per_s"] and len(record["losses"]) == 3
    assert "127.0.0.1:9" in record["tracking"]["mlflow"]["error"]


def test_a_silent_server_does_not_hold_the_run(tiny: None, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A server that accepts connections and never answers: the run ends after the trackers'
    budget (HARNESS_TRACK_TIMEOUT), not after MLflow's retries."""
    pytest.importorskip("mlflow")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    monkeypatch.setenv("HARNESS_TRACK_TIMEOUT", "2")
    try:
        started = time.monotonic()
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        assert _run(tmp_path / "run", "--track", "mlflow", "--track-uri", uri) == 0
        assert time.monotonic() - started < 20
    finally:
        listener.close()
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "HARNESS_TRACK_TIMEOUT" in warnings[0]


def test_a_missing_package_is_one_warning(tiny: None, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as if not installed
    monkeypatch.setenv("HARNESS_TRACK", "tensorboard")  # the environment chooses it
    out = tmp_path / "run"
    assert _run(out) == 0
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "tensorboard is not installed" in warnings[0]
    assert "perception-harness[track]" in warnings[0]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and "error" in record["tracking"]["tensorboard"]


def test_an_unknown_tracker_is_a_usage_error(tiny: None, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown tracker 'tensorbord'"):
        tracker_names("tensorbord")
    assert tracker_names(" MLflow, tensorboard,mlflow") == ["mlflow", "tensorboard"]
    assert _run(tmp_path / "run", "--track", "wandb") == 2
    assert not (tmp_path / "run" / "record.json").exists()


def test_a_tracker_failing_mid_run_is_disabled_after_one_warning(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk on the third write: one warning, no further calls, the caller unharmed."""
    from harness.trackers import Tracker
    from harness.tracking import Channel

    calls: list[int] = []

    class Full(Tracker):
        name = "tensorboard"

        def scalars(self, values: dict[str, float], step: int) -> None:
            calls.append(step)
            if step == 3:
                raise OSError(28, "No space left on device")

    channel = Channel(Full())
    for step in range(1, 7):
        channel.submit(channel.tracker.scalars, {"train/loss": 1.0}, step)
    assert channel.wait(time.monotonic() + 5)
    channel.stop()
    assert calls == [1, 2, 3]
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "No space left on device" in warnings[0]


def test_a_password_in_the_tracking_uri_is_masked_in_the_record() -> None:
    from harness.config import RunConfig, is_masked, mask_password

    uri = "https://alice:s3cret@mlflow.example:5000/api"
    cfg = RunConfig(workload="tiny", plugin_options=(("track_uri", uri), ("track", "mlflow")))
    recorded = dict(cfg.to_dict()["plugin_options"])
    assert recorded["track_uri"] == "https://alice:***@mlflow.example:5000/api"
    assert "s3cret" not in str(cfg.to_dict())
    assert is_masked(recorded["track_uri"]) and not is_masked(uri)
    for plain in ("http://host:5000", "sqlite:///x.db", "https://bob@host", 3, None):
        assert mask_password(plain) == plain
