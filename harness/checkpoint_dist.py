"""Periodic checkpoints of multi-process runs (DDP, DeepSpeed): what is shared, what per rank.

The checkpoint manager (harness/checkpointing.py) writes them; this is the layout it
writes and how a rank reads its part back. One file per checkpoint,
`checkpoints/step_<N>.pt`, written by rank 0 alone:

- shared (top level, as in a single-process checkpoint): model, optimizer, scheduler and
  GradScaler state, step, epoch, micro-steps. Rank 0's copy: under DDP they are replicated
  (gradients are all-reduced before every step; buffers such as BatchNorm statistics are
  broadcast from rank 0 at the start of every forward, so rank 0's are what every rank
  computes the next step with).
- `world_size` and `ranks`: one share per rank, in rank order, with the pieces registered
  per rank, what differs between ranks: the RNG states (each rank is seeded with seed + rank), the data position (a
  workload batch sampler's state may differ per rank), the workload's own state (a temporal
  memory holds that rank's samples), the pending loss terms and the losses, evaluations,
  timer and memory peaks of that rank's record.

Why gathered into one file rather than a file per rank: one rename makes the checkpoint
complete for every rank at once (no set of files where one rank's share is missing, no
commit protocol); and the fallback to an older checkpoint when the newest is corrupt is the
same choice on every rank, made before any process group exists, because every rank reads
the same file. The shares are small next to the model (RNG states are a few KB); the gather
runs over the host-side gloo group, not the device's collectives.

DeepSpeed keeps model, fp32 master weights and optimizer (ZeRO shards) in its engine, so the
engine writes them with its own `save_checkpoint` into `checkpoints/deepspeed/step_<N>/`
first, on every rank (`EngineFiles`, the engine as a checkpoint piece); the harness file (no
model or optimizer, `engine` naming the tag) is written after every rank has finished its
part (the gather is the barrier) and is the commit marker: a tag folder without its step
file is an incomplete save and is removed.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from harness.checkpoint import checkpoint_dir, fsync_tree, list_checkpoints
from harness.errors import UsageError

ENGINE_DIR = "deepspeed"


def saves_through_engine(strategy: Any) -> bool:
    """True where the strategy's engine writes model and optimizer itself (DeepSpeed)."""
    return bool(strategy.saves_own_checkpoint)


def engine_dir(out_dir: Path) -> Path:
    return checkpoint_dir(out_dir) / ENGINE_DIR


class EngineFiles:
    """The strategy's engine as a checkpoint piece: model, master weights and optimizer in
    the engine's own files under checkpoints/deepspeed/step_<N>/, the harness file's
    `engine` entry naming them."""

    keys = ("engine",)

    def __init__(self, strategy: Any, out_dir: Path) -> None:
        self.strategy, self.out_dir = strategy, Path(out_dir)
        self.tag: str | None = None

    def save_files(self, step: int) -> None:
        """The engine's save, on every rank (a collective), before the harness file; synced
        to disk here (the engine's writer does not fsync), as the harness file's writer does."""
        self.tag = f"step_{step}"
        self.strategy.save_engine_checkpoint(engine_dir(self.out_dir), self.tag)
        fsync_tree(engine_dir(self.out_dir) / self.tag)

    def state_dict(self) -> dict[str, Any]:
        return {"engine": {"dir": ENGINE_DIR, "tag": self.tag}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        engine = state["engine"]
        if engine is None:
            raise UsageError("the checkpoint holds no engine files, and this run's strategy "
                             "keeps model and optimizer in its engine")
        self.strategy.load_engine_checkpoint(checkpoint_dir(self.out_dir) / str(engine["dir"]),
                                             str(engine["tag"]))

    def committed(self) -> None:
        """The harness file is written: engine folders without one are dropped."""
        prune_engine_tags(self.out_dir)


def prune_engine_tags(out_dir: Path) -> None:
    """Remove engine tag folders whose step file is gone (pruned) or never came (cut short)."""
    folder = engine_dir(out_dir)
    kept = {f"step_{step}" for step, _ in list_checkpoints(out_dir)}
    for tag in folder.iterdir() if folder.is_dir() else ():
        if tag.is_dir() and tag.name not in kept:
            shutil.rmtree(tag, ignore_errors=True)


def engine_problem(out_dir: Path, state: dict[str, Any]) -> str | None:
    """Why a checkpoint's engine files cannot be used (None: they can). Every file is read
    with weights_only=True first: a truncated shard makes the resume fall back to the
    previous checkpoint, and a file that would need arbitrary unpickling is refused."""
    engine = state.get("engine")
    if engine is None:
        return None
    folder = checkpoint_dir(out_dir) / str(engine["dir"]) / str(engine["tag"])
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    if not files:
        return f"its engine files ({folder}) are missing"
    from harness.deepspeed_strategy import load_engine_file

    for path in files:
        try:
            load_engine_file(path)
        except UsageError as exc:
            return f"engine file {path.name}: {exc}"
    return None


def state_for_rank(state: dict[str, Any], rank: int, world_size: int,
                   path: Path) -> dict[str, Any]:
    """The checkpoint as this rank sees it: the shared part plus its own share (flat, as a
    single-process checkpoint). A different number of processes is refused: the data shards,
    RNG streams and per-rank workload states would not map onto the new ranks."""
    saved = int(state.get("world_size", 1))
    if saved != world_size:
        raise UsageError(f"{path}: written by a run of {saved} process(es), this one has "
                         f"{world_size}; resume with --nproc {saved} (x --nnodes) as recorded")
    if "ranks" not in state:
        return state
    own = {k: v for k, v in state.items() if k not in ("ranks", "world_size")}
    own.update(state["ranks"][rank])
    return own
