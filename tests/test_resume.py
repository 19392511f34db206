"""Periodic checkpoints and `harness run --resume`: an interrupted run, resumed, is the
uninterrupted run bit for bit (losses, final weights, metrics).

This module is also a plugin (HARNESS_PLUGINS): the `tiny_noisy` workload draws from every
RNG (python, numpy, torch) in its data and loss, uses Adam with a schedule and carries state
of its own; its `harness_step_end` hook sends SIGTERM to the process at a chosen step.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness import Datasets, hookimpl
from harness.cli import main
from harness.safe_load import safe_torch_load
from tests.tiny_workload import TinyConfig, TinyWorkload, _blobs

KILL_AT = "RESUME_TEST_SIGTERM_AT"
TWICE = "RESUME_TEST_SIGTERM_TWICE"


class _Augmented(torch.utils.data.Dataset):
    """Each read draws from torch, numpy and python RNGs (like random augmentation)."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        x, y = self.base[i]
        jitter = 0.1 * torch.randn(x.shape) + float(np.random.rand()) * 0.05 + random.random() * 0.05
        return x + jitter, y


class NoisyWorkload(TinyWorkload):
    name = "tiny_noisy"

    def __init__(self, config: TinyConfig, user_set: frozenset[str] = frozenset()) -> None:
        super().__init__(config, user_set)
        self.seen = torch.zeros((), dtype=torch.int64)  # state of its own, across steps

    @classmethod
    def presets(cls) -> dict[str, TinyConfig]:
        return {"smoke": TinyConfig(steps=50), "full": TinyConfig(steps=50)}

    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        return Datasets(_Augmented(_blobs(512, self.config, 1)), _blobs(256, self.config, 2),
                        None, "synthetic")

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(self.config.features, 16), torch.nn.ReLU(),
                                   torch.nn.Dropout(0.2), torch.nn.Linear(16, self.config.classes))

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=0.01)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))

    def loss(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        self.seen += 1
        terms = super().loss(model, batch)
        terms["loss_state"] = 1e-3 * (self.seen % 7).float()
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"].clone()


@hookimpl
def harness_workloads() -> list[type]:
    return [NoisyWorkload]


@hookimpl
def harness_step_end(run: Any, step: int) -> None:
    if str(step) == os.environ.get(KILL_AT):
        os.kill(os.getpid(), signal.SIGTERM)
        if os.environ.get(TWICE):  # the second stops at once, as a second Ctrl-C does
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture
def plugins_here(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    from harness import plugins

    monkeypatch.setenv("HARNESS_PLUGINS", "tests.tiny_workload,tests.test_resume")
    plugins.get_plugin_manager.cache_clear()
    return monkeypatch


def _record(out: Path) -> dict[str, Any]:
    return json.loads((out / "record.json").read_text())


def _loss_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The logged values, without the timings."""
    return [{k: v for k, v in row.items() if k not in ("iter_time", "data_time")}
            for row in record["losses"]]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return safe_torch_load(out / "checkpoint.pt")["model"]


RUN = ["run", "tiny_noisy", "--deterministic", "--checkpoint-interval", "10",
       "--log-interval", "3", "--warmup-steps", "2"]


def test_sigterm_then_resume_reproduces_the_uninterrupted_run(plugins_here: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*RUN, "--out", str(whole)]) == 0
    plugins_here.setenv(KILL_AT, "45")  # not a checkpoint step; in the second epoch
    assert main([*RUN, "--out", str(cut)]) == 130
    plugins_here.delenv(KILL_AT)
    interrupted = _record(cut)
    assert interrupted["status"] == "interrupted"
    # SIGTERM, like a first Ctrl-C, finishes the step it arrived in and checkpoints there.
    assert "stopped after step 46 with a checkpoint" in interrupted["error"]
    names = sorted(p.name for p in (cut / "checkpoints").iterdir())
    assert names == ["step_40.pt", "step_46.pt"]  # --keep-checkpoints 2; no temp file left
    ckpt = safe_torch_load(cut / "checkpoints" / "step_46.pt")  # weights_only=True
    assert ckpt["step"] == 46 and ckpt["epoch"] == 1 and ckpt["data"]["in_epoch"] == 14
    assert set(ckpt["rng"]) == {"python", "numpy", "torch_cpu", "device"}
    assert int(ckpt["workload_state"]["seen"]) == 47  # 46 steps + the FLOPs-counting call

    # A truncated newest checkpoint: the resume falls back to the previous one.
    fallback = tmp_path / "fallback"
    shutil.copytree(cut, fallback)
    newest = fallback / "checkpoints" / "step_46.pt"
    newest.write_bytes(newest.read_bytes()[:1000])

    assert main(["run", "--resume", str(cut)]) == 0
    assert main(["run", "--resume", str(fallback)]) == 0
    expected = _record(whole)
    for out, step in ((cut, 46), (fallback, 40)):
        resumed = _record(out)
        assert resumed["status"] == "ok"
        assert [r["step"] for r in resumed["resumed_from"]] == [step]
        assert _loss_rows(resumed) == _loss_rows(expected)
        assert resumed["metrics"] == expected["metrics"]
        got, want = _weights(out), _weights(whole)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
        # Every segment repeats its 2 warmup steps: 48 timed steps after one resume.
        assert resumed["throughput"]["timed_steps"] == 50 - 2 - 2
        assert resumed["throughput"]["segments"] == 2
        assert resumed["started_at"] == interrupted["started_at"]
    assert "skipped step_46.pt" in _record(fallback)["resumed_from"][0]["note"]


def test_resume_refuses_a_finished_run_and_changed_options(plugins_here: pytest.MonkeyPatch,
                                                           tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    plugins_here.setenv(KILL_AT, "7")
    assert main(["run", "tiny_noisy", "--steps", "12", "--checkpoint-interval", "5",
                 "--out", str(out)]) != 0
    plugins_here.delenv(KILL_AT)
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--steps", "20", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "seed: recorded 0, given 3" in err and "steps: recorded 12, given 20" in err
    assert main(["run", "--resume", str(out), "--keep-checkpoints", "1"]) == 0
    assert _record(out)["throughput"]["optimizer_steps"] == 12
    assert main(["run", "--resume", str(out)]) == 2
    assert "already finished" in capsys.readouterr().err


def test_a_run_without_periodic_checkpoints_cannot_resume(plugins_here: pytest.MonkeyPatch,
                                                          tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    plugins_here.setenv(KILL_AT, "3")
    plugins_here.setenv(TWICE, "1")  # stopped at once: no step-end checkpoint either
    assert main(["run", "tiny_noisy", "--steps", "6", "--out", str(out)]) != 0
    assert not (out / "checkpoints").exists()  # smoke: periodic checkpoints are off by default
    assert main(["run", "--resume", str(out)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_a_failed_write_leaves_no_temp_file_and_keeps_the_previous(tmp_path: Path) -> None:
    from harness.checkpoint import list_checkpoints, save_periodic

    save_periodic({"model": {"w": torch.ones(2)}, "step": 1}, tmp_path, 1, keep=2)

    class Boom:
        def __reduce__(self) -> Any:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_periodic({"model": {}, "bad": Boom()}, tmp_path, 2, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_1.pt"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]


def test_config_dataclass_round_trip() -> None:
    """The recorded config (JSON) reads back as the same RunConfig."""
    from harness.config import RunConfig
    from harness.records import SCHEMA
    from harness.resume import recorded_config

    cfg = RunConfig(workload="tiny", overrides=("lr=0.2",), steps=5, checkpoint_interval=2)
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"resume-rt-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    (folder / "record.json").write_text(json.dumps(
        {"schema": SCHEMA, "kind": "train", "workload": "tiny", "scale": "smoke",
         "backend": "cpu", "precision": "fp32", "status": "interrupted",
         "config": {"run": cfg.to_dict()}}))
    back, _ = recorded_config(folder)
    assert dataclasses.replace(back, out=None) == cfg
    shutil.rmtree(folder)


SIGINT_AT = "RESUME_TEST_SIGINT_AT"


@hookimpl
def harness_run_start(run: Any) -> None:
    # The SIGINT(s) land in the middle of a step's loss, as a user's Ctrl-C would.
    at = os.environ.get(SIGINT_AT)
    if at:
        count = int(os.environ.get("RESUME_TEST_SIGINTS", "1"))
        original = run.workload.loss

        def loss(model: Any, batch: Any) -> Any:
            if run.step + 1 == int(at) and not getattr(run, "_sent", False):
                run._sent = True
                for _ in range(count):
                    os.kill(os.getpid(), signal.SIGINT)
            return original(model, batch)

        run.workload.loss = loss


def test_first_ctrl_c_finishes_the_step_with_a_checkpoint(plugins_here: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ["run", "tiny_noisy", "--deterministic", "--steps", "20", "--log-interval", "1"]
    assert main([*args, "--out", str(whole)]) == 0
    plugins_here.setenv(SIGINT_AT, "7")
    assert main([*args, "--out", str(cut)]) != 0
    plugins_here.delenv(SIGINT_AT)
    record = _record(cut)
    assert record["status"] == "interrupted" and "stopped after step 7" in record["error"]
    assert [r["step"] for r in record["losses"]] == list(range(1, 8))  # step 7 finished
    assert [p.name for p in (cut / "checkpoints").iterdir()] == ["step_7.pt"]
    assert main(["run", "--resume", str(cut)]) == 0
    assert _loss_rows(_record(cut)) == _loss_rows(_record(whole))
    got, want = _weights(cut), _weights(whole)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_second_ctrl_c_stops_at_once(plugins_here: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = tmp_path / "run"
    plugins_here.setenv(SIGINT_AT, "7")
    plugins_here.setenv("RESUME_TEST_SIGINTS", "2")
    assert main(["run", "tiny_noisy", "--steps", "20", "--log-interval", "1",
                 "--out", str(out)]) == 130  # as in eval (issue 24: was 1 in training)
    record = _record(out)
    assert record["status"] == "interrupted"
    assert [r["step"] for r in record["losses"]] == list(range(1, 7))  # step 7 never finished
    assert not (out / "checkpoints").exists()


def test_yolov3_sigterm_then_resume_is_bit_exact(plugins_here: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """The same on a real workload (yolov3 smoke, few steps on a small synthetic set)."""
    args = ["run", "yolov3", "--deterministic", "--steps", "6", "--batch-size", "2",
            "--eval-batch-size", "4", "--log-interval", "1", "--warmup-steps", "1",
            "--checkpoint-interval", "2", "--set", "synth_train_images=12",
            "--set", "synth_val_images=4", "--cache-dir", str(tmp_path / "cache")]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*args, "--out", str(whole)]) == 0
    plugins_here.setenv(KILL_AT, "2")  # checkpoints at 2 and 4; SIGTERM in step 3 -> one at 3
    assert main([*args, "--out", str(cut)]) != 0
    plugins_here.delenv(KILL_AT)
    assert _record(cut)["status"] == "interrupted"
    assert main(["run", "--resume", str(cut)]) == 0
    resumed, expected = _record(cut), _record(whole)
    assert [r["step"] for r in resumed["resumed_from"]] == [3]
    assert _loss_rows(resumed) == _loss_rows(expected)
    assert resumed["metrics"] == expected["metrics"]
    got, want = _weights(cut), _weights(whole)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_sigkill_then_resume(tmp_path: Path) -> None:
    """SIGKILL leaves no record update at all (status still `running`): resume still works."""
    import subprocess
    import sys
    import time

    env = {**os.environ, "HARNESS_PLUGINS": "tests.tiny_workload,tests.test_resume"}
    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, "-m", "harness.cli", "run", "tiny_noisy", "--deterministic",
            "--steps", "40", "--checkpoint-interval", "10", "--set", "sleep_s=0.05"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([*args, "--out", str(whole)], env=env, cwd=root, check=True,
                   capture_output=True)
    proc = subprocess.Popen([*args, "--out", str(cut)], env=env, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / "checkpoints" / "step_20.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert _record(cut)["status"] == "running"
    subprocess.run([sys.executable, "-m", "harness.cli", "run", "--resume", str(cut)],
                   env=env, cwd=root, check=True, capture_output=True)
    resumed = _record(cut)
    assert resumed["status"] == "ok" and resumed["resumed_from"][0]["step"] >= 20
    assert resumed["resumed_from"][0]["previous_status"] == "running"
    assert _loss_rows(resumed) == _loss_rows(_record(whole))
    got, want = _weights(cut), _weights(whole)
    assert all(torch.equal(got[k], want[k]) for k in want)


class _DriftingSampler:
    """A workload batch sampler whose order depends on its own state, not only the epoch."""

    def __init__(self) -> None:
        self.g = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return 4

    def __iter__(self) -> Any:
        perm = torch.randperm(8, generator=self.g).tolist()
        for i in range(4):
            yield perm[2 * i:2 * i + 2]

    def state_dict(self) -> dict[str, Any]:
        return {"g": self.g.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.set_state(state["g"])


def test_a_stateful_workload_sampler_resumes_at_the_same_batch() -> None:
    from types import SimpleNamespace

    from harness.checkpoint import ResumableBatches

    def stream() -> tuple[ResumableBatches, Any]:
        loader = torch.utils.data.DataLoader(torch.arange(8), batch_sampler=_DriftingSampler(),
                                             generator=torch.Generator().manual_seed(0))
        batches = ResumableBatches(loader, SimpleNamespace(epoch=0))
        return batches, iter(batches)

    first, it = stream()
    seen = [next(it).tolist() for _ in range(6)]  # epoch 1, two batches in
    state = first.state_dict()
    expected = [next(it).tolist() for _ in range(5)]
    second, it2 = stream()
    second.load_state_dict(state)
    assert state["epoch"] == 1 and state["in_epoch"] == 2 and seen
    assert [next(it2).tolist() for _ in range(5)] == expected
