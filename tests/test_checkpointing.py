"""The checkpoint manager (harness/checkpointing.py): Stateful pieces, one writer, one path
for a single process, DDP's per-rank shares and an engine's own files."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from harness.checkpoint import list_checkpoints, write_atomic
from harness.checkpoint_dist import state_for_rank
from harness.checkpointing import CheckpointManager, Keyed, RunHistory, RunProgress
from harness.errors import UsageError
from harness.safe_load import load_checkpoint, safe_torch_load
from tests.tiny_workload import TinyConfig


def _run(tmp_path: Path, **kw: Any) -> SimpleNamespace:
    fields: dict[str, Any] = dict(
        config=SimpleNamespace(workload="tiny"), workload=SimpleNamespace(config=TinyConfig()),
        out_dir=tmp_path, step=3, epoch=1, micro_steps=6, total_steps=10, model_info=None,
        losses=[{"step": 2, "loss": 1.0}], evals=[], trained_model=None, optimizer=None,
        start_weights=[], ema=None)
    fields.update(kw)
    return SimpleNamespace(**fields)


class _Share:
    """A per-rank piece with a value of its own."""

    keys = ("share",)

    def __init__(self, value: int) -> None:
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        return {"share": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["share"]


class _NotOnThisRank:
    keys = ("model",)

    def state_dict(self) -> dict[str, Any]:
        raise AssertionError("a replicated piece is read on rank 0 only")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def test_pieces_round_trip_through_one_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    run = _run(tmp_path)
    manager = CheckpointManager(tmp_path, keep=1).register(
        RunProgress(run), Keyed("model", model, required=True),
        Keyed("optimizer", optimizer, required=True), Keyed("scheduler", None))
    manager.register(RunHistory(run), _Share(7), per_rank=True)
    path = manager.save(run.step)
    assert path == tmp_path / "checkpoints" / "step_3.pt"
    state = safe_torch_load(path)
    assert state["format"] == "perception-harness/train-checkpoint/1"
    assert (state["step"], state["scheduler"], state["share"]) == (3, None, 7)
    assert "ranks" not in state

    fresh_model = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh_model.parameters(), lr=0.1, momentum=0.9)
    back = _run(tmp_path, step=0, epoch=0, micro_steps=0, losses=[])
    share = _Share(0)
    CheckpointManager(tmp_path).register(
        RunProgress(back), Keyed("model", fresh_model, required=True),
        Keyed("optimizer", fresh_opt, required=True), Keyed("scheduler", None)).register(
        RunHistory(back), share, per_rank=True).load(state)
    assert (back.step, back.epoch, back.micro_steps, back.losses) == (3, 1, 6, run.losses)
    assert share.value == 7
    assert torch.equal(fresh_model.weight, model.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])
    manager.save(4)  # keep=1: the older one goes once the new one is complete
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]


def test_a_checkpoint_of_another_length_is_refused_before_anything_loads(tmp_path: Path) -> None:
    run = _run(tmp_path)
    model = torch.nn.Linear(3, 2)
    state = CheckpointManager(tmp_path).register(
        RunProgress(run), Keyed("model", model)).state_dict()
    other = torch.nn.Linear(3, 2)
    before = other.weight.detach().clone()
    longer = _run(tmp_path, total_steps=20, step=0)
    with pytest.raises(UsageError, match="written for 10 steps, this run has 20"):
        CheckpointManager(tmp_path).register(RunProgress(longer), Keyed("model", other)).load(state)
    assert torch.equal(other.weight, before) and longer.step == 0


def test_keys_are_owned_once_and_required_state_must_be_there(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path).register(Keyed("model", torch.nn.Linear(1, 1)))
    with pytest.raises(ValueError, match="registered twice"):
        manager.register(_NotOnThisRank())
    with pytest.raises(UsageError, match="no model state"):
        Keyed("model", torch.nn.Linear(1, 1), required=True).load_state_dict({"model": None})


def test_ddp_rank_0_writes_the_shared_pieces_and_every_share(tmp_path: Path) -> None:
    class Main:
        world_size, is_main = 2, True

        def gather_to_main(self, share: Any) -> list[Any]:
            return [share, {"share": 11}]  # rank 1's share, as the gather brings it

    class Other(Main):
        is_main = False

        def gather_to_main(self, share: Any) -> None:
            return None

    run = _run(tmp_path)
    path = CheckpointManager(tmp_path, Main()).register(RunProgress(run)).register(
        _Share(10), per_rank=True).save(run.step)
    assert path is not None
    state = safe_torch_load(path)
    assert state["world_size"] == 2 and state["ranks"] == [{"share": 10}, {"share": 11}]
    assert "share" not in state
    # The other ranks send their share only: the replicated pieces are not even read there.
    assert CheckpointManager(tmp_path, Other()).register(_NotOnThisRank()).register(
        _Share(11), per_rank=True).save(run.step) is None
    mine = _Share(0)
    back = _run(tmp_path, step=0)
    CheckpointManager(tmp_path).register(RunProgress(back)).register(
        mine, per_rank=True).load(state_for_rank(state, 1, 2, path))
    assert mine.value == 11 and back.step == 3


def test_an_engine_writes_its_files_before_the_harness_file_commits_them(tmp_path: Path) -> None:
    events: list[str] = []

    class Engine:
        keys = ("engine",)

        def save_files(self, step: int) -> None:
            events.append(f"files {step}")

        def state_dict(self) -> dict[str, Any]:
            events.append("state")
            return {"engine": {"dir": "deepspeed", "tag": "step_5"}}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            events.append(f"load {state['engine']['tag']}")

        def committed(self) -> None:
            events.append("committed " + ",".join(
                p.name for p in (tmp_path / "checkpoints").glob("*.pt")))

    manager = CheckpointManager(tmp_path).register_engine(Engine())
    path = manager.save(5)
    assert events == ["files 5", "state", "committed step_5.pt"]
    state = safe_torch_load(path)
    assert "model" not in state
    manager.load(state)
    assert events[-1] == "load step_5"


def test_the_final_checkpoint_goes_through_the_one_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import runner

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    run = _run(tmp_path, trained_model=torch.nn.Linear(2, 2), step=7,
               workload=SimpleNamespace(config=SimpleNamespace()))
    monkeypatch.setattr(runner, "config_to_dict", lambda c: {"lr": 0.1})
    path = tmp_path / "checkpoint.pt"
    old = os.umask(0o022)
    try:
        runner.save_checkpoint(run, path)  # type: ignore[arg-type]
    finally:
        os.umask(old)
    assert len(synced) == 2  # the file, then the folder holding the rename
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    ckpt = load_checkpoint(path)
    assert (ckpt.workload, ckpt.step, ckpt.workload_config) == ("tiny", 7, {"lr": 0.1})
    assert "optimizer" not in safe_torch_load(path)  # none to read: left out, as before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    write_atomic({"a": 1}, path)

    class Boom:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        write_atomic({"a": Boom()}, path)
    assert safe_torch_load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_engine_files_are_synced_before_the_harness_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.checkpoint_dist import EngineFiles

    order: list[str] = []

    class Strategy:
        world_size, is_main = 1, True

        def save_engine_checkpoint(self, folder: Path, tag: str) -> None:
            (folder / tag).mkdir(parents=True)
            for name in ("mp_rank_00_model_states.pt", "optim_states.pt"):
                (folder / tag / name).write_bytes(b"x")

    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd))[1])
    CheckpointManager(tmp_path).register_engine(EngineFiles(Strategy(), tmp_path)).save(2)
    names = [Path(p).name for p in order]
    harness_file = next(i for i, n in enumerate(names) if n.startswith(".step_2.pt."))
    assert names.index("mp_rank_00_model_states.pt") < harness_file
    assert names.index("optim_states.pt") < harness_file
