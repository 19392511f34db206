"""Data faults during a run (issue 15 items 2 and 3): a DataLoader worker's dataset error is the
same one line as in the main process; an empty or broken val split is found before step 1; an
evaluation that fails after training leaves the trained weights on disk.

The `brokendata` workload below (registered as a plugin next to the tiny one) is the tiny
classifier with knobs that break its data or its metric.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import Datasets, hookimpl
from harness.api import Workload
from harness.cli import main
from harness.errors import DatasetError
from tests.tiny_workload import TinyConfig, TinyWorkload, _blobs

OK, FAILED, USAGE = 0, 1, 2
PLUGINS = "tests.tiny_workload,tests.test_bad_inputs_data"


@dataclasses.dataclass(frozen=True)
class BrokenDataConfig(TinyConfig):
    train_error_at: int = -1  # the train sample index whose annotation is broken (-1: none)
    val_error: bool = False  # every val sample is broken
    val_samples: int = 64
    eval_raises: bool = False  # the metric fails after the predictions


class _Split(torch.utils.data.Dataset):
    def __init__(self, blobs: Any, broken_from: int, file: str) -> None:
        self.blobs, self.broken_from, self.file = blobs, broken_from, file

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> Any:
        if 0 <= self.broken_from <= index:
            raise DatasetError(f"{self.file}: sample {index} field 'x' has a non-finite value")
        return self.blobs[index]


class BrokenDataWorkload(TinyWorkload):
    name = "brokendata"
    Config = BrokenDataConfig

    @classmethod
    def presets(cls) -> dict[str, Any]:
        return {"smoke": BrokenDataConfig()}

    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        c = self.config
        return Datasets(_Split(_blobs(256, c, 1), c.train_error_at, "train.json"),
                        _Split(_blobs(c.val_samples, c, 2), 0 if c.val_error else -1,
                               "val.json"), None, "synthetic")

    def evaluate(self, predictions: list[Any]) -> dict[str, float]:
        if self.config.eval_raises:
            raise RuntimeError("the metric broke")
        return super().evaluate(predictions)


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [BrokenDataWorkload]


@pytest.fixture(autouse=True)
def _broken_plugin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness import plugins

    monkeypatch.setenv("HARNESS_PLUGINS", PLUGINS)
    monkeypatch.delenv("HARNESS_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    plugins.get_plugin_manager.cache_clear()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


@pytest.mark.parametrize("workers", ["0", "1"])
def test_dataset_error_is_one_line_in_a_worker_as_in_the_main_process(
        workers: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, lines = _run(capsys, "run", "brokendata", "--steps", "3", "--workers", workers,
                       "--set", "train_error_at=20", "--out", str(out))
    assert code == USAGE, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("harness: error: train.json: sample "), lines[0]
    assert "Traceback" not in lines[0] and "worker" not in lines[0], lines[0]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("harness.errors.DatasetError: train.json: sample ")
    assert "Original Traceback" not in record["error"]


@pytest.mark.parametrize("setting,says", [
    ("val_samples=0", "the val split is empty (0 samples)"),
    ("val_error=true", "val.json: sample 0 field 'x' has a non-finite value"),
])
def test_bad_val_split_is_found_before_step_1(
        setting: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, lines = _run(capsys, "run", "brokendata", "--steps", "3", "--set", setting,
                       "--out", str(out))
    assert code == USAGE, lines
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in lines[0], lines
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "failed" and says in record["error"]
    assert record["losses"] == [] and not record["throughput"]  # no step was trained
    assert not (out / "checkpoint.pt").exists()


def test_no_eval_does_not_need_a_val_split(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, lines = _run(capsys, "run", "brokendata", "--steps", "2", "--no-eval", "--set",
                       "val_samples=0", "--out", str(out))
    assert code == OK and lines == []
    assert json.loads((out / "record.json").read_text())["status"] == "ok"


def test_failing_evaluation_keeps_the_trained_weights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, lines = _run(capsys, "run", "brokendata", "--steps", "4", "--set", "eval_raises=true",
                       "--out", str(out))
    assert code == FAILED, lines
    assert len(lines) == 1 and "the metric broke" in lines[0], lines
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("evaluation: RuntimeError: the metric broke")
    assert record["throughput"]["optimizer_steps"] == 4
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 4 and saved["workload"] == "brokendata"
    assert set(saved["model"]) == {"weight", "bias"}


class _Raising(torch.utils.data.Dataset):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Any:
        raise self.error


@pytest.mark.parametrize("error", [
    DatasetError("a.json: field 'bbox' has a non-finite value\nsecond line"),
    FileNotFoundError(2, "No such file or directory", "/data/img 1.jpg"),
])
def test_worker_error_origin_gives_back_the_workers_error(error: BaseException) -> None:
    from harness.errors import worker_error_origin

    loader = torch.utils.data.DataLoader(_Raising(error), num_workers=1)
    with pytest.raises(type(error)) as info:
        next(iter(loader))
    assert "DataLoader worker process 0" in str(info.value)  # torch's version
    origin = worker_error_origin(info.value)
    assert type(origin) is type(error) and str(origin) == str(error)
    assert origin.__cause__ is info.value  # --debug still shows the worker's traceback
    if isinstance(error, OSError):
        assert isinstance(origin, OSError)
        assert (origin.errno, origin.filename) == (error.errno, error.filename)
    plain = RuntimeError("not from a worker")
    assert worker_error_origin(plain) is plain
