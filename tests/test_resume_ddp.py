"""`harness run --resume` under DDP (`--nproc 2`, gloo on CPU): a run stopped by SIGTERM to
the launching parent at a step that is not a checkpoint step, then resumed, is the
uninterrupted run bit for bit on every rank (losses of both ranks' records, final weights).

This module is also a plugin (HARNESS_PLUGINS): `tiny_noisy_ranked` is test_resume's
`tiny_noisy` (draws from every RNG, Adam with a schedule, dropout) whose own state differs
per rank (a running sum of the labels that rank saw, fed into its loss), so a checkpoint
that kept rank 0's RNG streams or workload state for every rank would change rank 1's losses.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import hookimpl
from harness.safe_load import safe_torch_load
from tests.conftest import harness_cmd
from tests.test_resume import NoisyWorkload, _loss_rows

KILL_AT = "RESUME_DDP_TEST_SIGTERM_AT"
SIGINT_AT = "RESUME_DDP_TEST_SIGINT_AT"


class RankedNoisyWorkload(NoisyWorkload):
    name = "tiny_noisy_ranked"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label_sum = torch.zeros((), dtype=torch.int64)  # this rank's samples only

    def loss(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        self.label_sum += batch[1].sum()
        terms = super().loss(model, batch)
        terms["loss_state"] = terms["loss_state"] + 1e-3 * (self.label_sum % 11).float()
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "label_sum": self.label_sum.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.label_sum = state["label_sum"].clone()


@hookimpl
def harness_workloads() -> list[type]:
    return [RankedNoisyWorkload]


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@hookimpl
def harness_step_end(run: Any, step: int) -> None:
    if str(step) == os.environ.get(SIGINT_AT) and run.strategy.is_main:
        os.kill(_parent_of(os.getppid()), signal.SIGINT)  # a Ctrl-C; the ranks go on
    if str(step) != os.environ.get(KILL_AT):
        return
    if run.strategy.is_main:
        # worker -> torchrun -> the `harness run --nproc` parent, which forwards the signal
        # to torchrun, which passes it to every worker (as a CI runner's cancel would).
        os.kill(_parent_of(os.getppid()), signal.SIGTERM)
    # Every rank waits here until the forwarded SIGTERM has reached it; each then finishes
    # its next step, and all stop after the same one (the loop's agreement), checkpointed.
    time.sleep(5)


def _harness(*args: str, env: dict[str, str], check: int | None = 0
             ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(harness_cmd("run", *args), env=env, capture_output=True, text=True,
                          timeout=600)
    if check is not None:
        assert proc.returncode == check, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads((out / name).read_text()) for name in ("record.json", "record.rank1.json")]


RUN = ["tiny_noisy_ranked", "--nproc", "2", "--deterministic", "--steps", "30",
       "--checkpoint-interval", "10", "--log-interval", "3", "--warmup-steps", "2"]


def test_ddp_sigterm_then_resume_reproduces_the_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    env = {**os.environ, "HARNESS_PLUGINS": "tests.tiny_workload,tests.test_resume_ddp",
           "OMP_NUM_THREADS": "1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _harness(*RUN, "--out", str(whole), env=env)
    # 16 batches per rank per epoch: checkpoints at 10 and 20; SIGTERM after step 25, so
    # every rank finishes step 26 and the run checkpoints there (epoch 1).
    _harness(*RUN, "--out", str(cut), env={**env, KILL_AT: "25"}, check=None)
    records = _records(cut)
    assert [r["status"] for r in records] == ["interrupted", "interrupted"]
    assert "interrupted by SIGTERM: stopped after step 26" in records[0]["error"]
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_20.pt", "step_26.pt"]

    ckpt = safe_torch_load(cut / "checkpoints" / "step_26.pt")  # weights_only=True
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2 and "model" in ckpt
    rank0, rank1 = ckpt["ranks"]
    assert rank0["data"]["in_epoch"] == rank1["data"]["in_epoch"] == 10
    assert not torch.equal(rank0["rng"]["torch_cpu"], rank1["rng"]["torch_cpu"])
    assert int(rank0["workload_state"]["label_sum"]) != int(rank1["workload_state"]["label_sum"])

    # Options that would change the run are refused by the parent, before any worker starts
    # (in this process: nothing is launched).
    from harness import plugins
    from harness.cli import main

    monkeypatch.setenv("HARNESS_PLUGINS", env["HARNESS_PLUGINS"])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    plugins.get_plugin_manager.cache_clear()
    capsys.readouterr()
    assert main(["run", "--resume", str(cut)]) == 2
    assert "world_size: recorded 2, given 1" in capsys.readouterr().err
    assert main(["run", "--resume", str(cut), "--nproc", "2", "--seed", "3"]) == 2
    assert "seed: recorded 0, given 3" in capsys.readouterr().err

    _harness("--resume", str(cut), "--nproc", "2", env=env)
    expected = _records(whole)
    for got, want in zip(_records(cut), expected):
        assert got["status"] == "ok", got["error"]
        assert [r["step"] for r in got["resumed_from"]] == [26]
        assert _loss_rows(got) == _loss_rows(want)
    resumed = _records(cut)[0]
    assert resumed["metrics"] == expected[0]["metrics"]
    assert resumed["throughput"]["timed_steps"] == 30 - 2 - 2  # each segment's warmup excluded
    assert resumed["throughput"]["segments"] == 2 and resumed["world_size"] == 2
    got_w, want_w = safe_torch_load(cut / "checkpoint.pt"), safe_torch_load(whole / "checkpoint.pt")
    assert all(torch.equal(got_w["model"][k], want_w["model"][k]) for k in want_w["model"])


def test_world_size_must_match_the_record_and_the_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.checkpoint_dist import state_for_rank
    from harness.errors import UsageError
    from harness.records import Record
    from harness.resume import check_world_size
    from harness.strategies import DDPStrategy

    def _record_of(world_size: int) -> Record:
        return Record(kind="train", workload="tiny", scale="smoke", backend="cpu", mode="eager",
                      precision="fp32", world_size=world_size)

    # The record's first write (all a SIGKILLed run leaves) comes before the strategy's setup:
    # it must already name the launcher's world size.
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert DDPStrategy().world_size == 2

    with pytest.raises(UsageError, match="world_size: recorded 1, given 2"):
        check_world_size(tmp_path, _record_of(world_size=1), 2)
    check_world_size(tmp_path, _record_of(world_size=2), 2)
    state = {"step": 3, "model": {}, "world_size": 2,
             "ranks": [{"rng": "r0", "losses": [0]}, {"rng": "r1", "losses": [1]}]}
    assert state_for_rank(state, 1, 2, tmp_path) == {"step": 3, "model": {}, "rng": "r1",
                                                     "losses": [1]}
    with pytest.raises(UsageError, match="written by a run of 2 process"):
        state_for_rank(state, 0, 1, tmp_path)


@pytest.mark.slow
def test_streampetr_ddp_resume_restores_each_ranks_memory_queue(tmp_path: Path) -> None:
    """StreamPETR's memory queue (workload state) differs per rank: each rank gets its own
    back, and step 5 (continuing each rank's sub-sequence) reads it. ~1 min on 2 cores."""
    pytest.importorskip("nuscenes", reason="nuscenes-devkit (extra 'bevdepth') is not installed")
    env = {**os.environ, "HARNESS_PLUGINS": "tests.tiny_workload,tests.test_resume_ddp",
           "OMP_NUM_THREADS": "1"}
    args = ["streampetr", "--nproc", "2", "--deterministic", "--steps", "6", "--batch-size", "1",
            "--log-interval", "1", "--warmup-steps", "1", "--checkpoint-interval", "2",
            "--cache-dir", str(tmp_path / "cache"), "--set", "synthetic_scenes=2",
            "--set", "synthetic_samples_per_scene=6", "--set", "synthetic_image_wh=320,180"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _harness(*args, "--out", str(whole), env=env)
    # SIGTERM after step 3: every rank finishes step 4 (a periodic step too) and stops there.
    _harness(*args, "--out", str(cut), env={**env, KILL_AT: "3"}, check=None)
    shares = safe_torch_load(cut / "checkpoints" / "step_4.pt")["ranks"]
    states = [share["workload_state"] for share in shares]
    assert states[0]["last"] != states[1]["last"]  # each rank's own slots
    assert not torch.equal(states[0]["memory"]["train"]["embedding"],
                           states[1]["memory"]["train"]["embedding"])
    # step 5 continues every slot's 3-frame sub-sequence: its losses read the restored queue
    assert all(int(slot[1]) % 3 != 2 for state in states for slot in state["last"]["train"])
    _harness("--resume", str(cut), "--nproc", "2", env=env)
    for got, want in zip(_records(cut), _records(whole)):
        assert got["status"] == "ok", got["error"]
        assert _loss_rows(got) == _loss_rows(want)
        assert got["metrics"] == want["metrics"]


def test_resume_relaunches_into_the_recorded_folder(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers get --resume DIR, no stamped --out; a multi-node resume needs no --out."""
    import argparse

    from harness import cli, launch
    from harness.config import RunConfig
    from harness.launch import add_launch_arguments, torchrun_command
    from harness.records import SCHEMA

    (tmp_path / "record.json").write_text(json.dumps(
        {"schema": SCHEMA, "kind": "train", "workload": "tiny", "scale": "smoke",
         "backend": "cpu", "precision": "fp32", "status": "interrupted", "world_size": 2,
         "config": {"run": RunConfig(workload="tiny", steps=5).to_dict()}}))
    launched: list[list[str]] = []
    monkeypatch.setattr(launch, "run_process_tree", lambda cmd: launched.append(cmd) or 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert cli.main(["run", "--resume", str(tmp_path), "--nproc", "2"]) == 0
    worker = launched[0][launched[0].index("harness.cli") + 1:]
    assert worker == ["run", "--resume", str(tmp_path)]

    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--resume")
    add_launch_arguments(parser)
    args = parser.parse_args(["--nnodes", "2", "--rdzv-endpoint", "node0:29400", "--resume", "r"])
    cmd = torchrun_command(args, ["run", "--resume", "r"])
    assert "--nnodes=2" in cmd and cmd[-3:] == ["run", "--resume", "r"]


@pytest.mark.slow
def test_ddp_first_ctrl_c_stops_every_rank_after_the_same_step(tmp_path: Path) -> None:
    """SIGINT to the --nproc parent reaches the ranks through the launcher, maybe in
    different steps: they agree, finish the same step, write one checkpoint there and
    stop; the resumed run is the uninterrupted one."""
    import re

    env = {**os.environ, "HARNESS_PLUGINS": "tests.tiny_workload,tests.test_resume_ddp",
           "OMP_NUM_THREADS": "1"}
    args = [*RUN[:RUN.index("--steps")], "--steps", "40", "--log-interval", "1",
            "--set", "sleep_s=0.02"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _harness(*args, "--out", str(whole), env=env)
    _harness(*args, "--out", str(cut), env={**env, SIGINT_AT: "12"}, check=None)
    records = _records(cut)
    stops = [re.search(r"stopped after step (\d+)", r["error"] or "") for r in records]
    assert all(stops), [r["error"] for r in records]
    step = int(stops[0].group(1))  # type: ignore[union-attr]
    assert 12 <= step < 40 and int(stops[1].group(1)) == step  # type: ignore[union-attr]
    assert (cut / "checkpoints" / f"step_{step}.pt").is_file()
    _harness("--resume", str(cut), "--nproc", "2", env=env)
    for got, want in zip(_records(cut), _records(whole)):
        assert got["status"] == "ok" and [r["step"] for r in got["resumed_from"]] == [step]
        assert _loss_rows(got) == _loss_rows(want)
