"""Periodic training checkpoints that let a run continue exactly where it stopped.

A checkpoint (`<out>/checkpoints/step_<N>.pt`) holds tensors and plain Python values only,
so `safe_load.safe_torch_load` (weights_only=True) reads it: model, optimizer, scheduler and
GradScaler state, step/epoch/micro-steps, the data order position (the loader generator's
state at the start of the current epoch plus the batches consumed in it), every RNG state
(python, numpy, torch CPU, the device's), the workload's own state when the workload has
`state_dict()`/`load_state_dict()`, and what the record had so far (losses, evals, the
timed steps of earlier segments).

This module is the file layer: where checkpoints live, the one writer every checkpoint
file goes through (`write_atomic`: a unique temp file in the same folder, fsync, rename, the
folder synced; the previous checkpoint stays until the new one is complete, and a failed
write removes its temp file), pruning and finding the newest complete one; plus the two
pieces of state that need more than a `state_dict()` call: the data position
(`ResumableBatches`) and the RNG states. What goes into a checkpoint and in which order it
is put back is harness/checkpointing.py (the manager); multi-process runs (DDP, DeepSpeed)
split the state into a shared part and one share per rank: harness/checkpoint_dist.py.
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from harness.atomic import atomic_write, fsync_path
from harness.errors import UsageError
from harness.safe_load import safe_torch_load

FORMAT = "perception-harness/train-checkpoint/1"
_NAME = re.compile(r"^step_(\d+)\.pt$")
# A `full` run writes a checkpoint this often unless --checkpoint-interval says otherwise.
DEFAULT_FULL_INTERVAL = 1000


def effective_interval(interval: int | None, scale: str) -> int:
    """--checkpoint-interval, or the default: off for smoke, every 1000 steps otherwise."""
    if interval is not None:
        return max(0, interval)
    return 0 if scale == "smoke" else DEFAULT_FULL_INTERVAL


# -- RNG states as tensors and plain values (weights_only=True loads them) --
def capture_rng(device_type: str) -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gauss": float(cached)},
        "torch_cpu": torch.get_rng_state(),
        "device": None,
    }
    if device_type != "cpu":
        # The device's generator through torch's generic device-module API (no vendor import).
        module = torch.get_device_module(device_type)
        state["device"] = module.get_rng_state().cpu()
    return state


def restore_rng(state: dict[str, Any], device_type: str) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached_gauss"]))
    torch.set_rng_state(state["torch_cpu"])
    if device_type != "cpu" and state.get("device") is not None:
        torch.get_device_module(device_type).set_rng_state(state["device"])


@runtime_checkable
class EpochSampler(Protocol):
    """A sampler that reshuffles per epoch (torch's DistributedSampler, a workload's batch
    sampler, see Workload.train_batch_sampler)."""

    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class StatefulSampler(Protocol):
    """A batch sampler with state beyond set_epoch(), stored with the data position."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class ResumableBatches:
    """Endless batches over epochs that can restart at the exact batch a checkpoint left off.

    Each epoch's order comes from the loader's generator (the shuffle and the iterator's base
    seed are drawn from it when the epoch starts) and the sampler's `set_epoch`; so the
    generator's state at the epoch's start plus the batches consumed identify the position.
    On resume the epoch is re-created from that state and the consumed batches are read and
    dropped (this re-reads up to one epoch; exact with in-process loading, --workers 0: loader
    workers keep their own random streams across epochs, which are not restored). Then
    `on_position` runs (the RNG restore), before the next batch is read.
    """

    def __init__(self, loader: Any, run: Any) -> None:
        self.loader, self.run = loader, run
        self.in_epoch = 0
        self.epoch_generator: torch.Tensor | None = None
        self.epoch_sampler: Any = None  # a workload sampler's state_dict() at the epoch start
        self._resume: dict[str, Any] | None = None
        self.on_position: Callable[[], None] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.run.epoch, "in_epoch": self.in_epoch,
                "generator": self.epoch_generator, "sampler": self.epoch_sampler}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = state
        self.run.epoch = int(state["epoch"])

    def __iter__(self) -> Iterator[Any]:
        while True:
            for sampler in (self.loader.sampler, self.loader.batch_sampler):
                if isinstance(sampler, EpochSampler):
                    sampler.set_epoch(self.run.epoch)
            generator = self.loader.generator
            # A workload's batch sampler with state beyond set_epoch() may expose it.
            sampler = self.loader.batch_sampler
            stateful = isinstance(sampler, StatefulSampler)
            skip = 0
            if self._resume is not None:
                if generator is not None and self._resume["generator"] is not None:
                    generator.set_state(self._resume["generator"])
                if stateful and self._resume.get("sampler") is not None:
                    sampler.load_state_dict(self._resume["sampler"])
                skip = int(self._resume["in_epoch"])
                self._resume = None
            self.epoch_generator = None if generator is None else generator.get_state().clone()
            self.epoch_sampler = to_cpu(sampler.state_dict()) if stateful else None
            self.in_epoch = 0
            batches = iter(self.loader)
            for _ in range(skip):
                next(batches)
                self.in_epoch += 1
            if self.on_position is not None:
                self.on_position()
                self.on_position = None
            for batch in batches:
                self.in_epoch += 1
                yield batch
            self.run.epoch += 1


# -- files --
def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def resume_hint(out_dir: Path) -> str:
    """After a signal stopped a run at once: whether and from where it can be resumed."""
    found = list_checkpoints(out_dir)
    if not found:
        return ("it cannot be resumed: it wrote no periodic checkpoint (off by default for "
                "smoke; --checkpoint-interval N writes them; Ctrl-C or SIGTERM once finishes the step "
                "and writes one)")
    step, path = found[-1]
    return f"continue from {path.name} (step {step}) with: harness run --resume {out_dir}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step_<N>.pt, oldest first."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def write_atomic(state: Any, path: Path) -> None:
    """torch.save `state` to `path` through the one atomic writer (harness/atomic.py): `path`
    is the old file or the complete new one. torch's zip writer reports a full disk as
    "unexpected pos ...", which is raised as the ENOSPC it is."""
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except RuntimeError as exc:
        if shutil.disk_usage(path.parent).free < 2**20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then the folders: files another writer made (a
    strategy engine's own checkpoint files) are on disk before the harness file that
    commits them is written."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fsync_path(path)
    for path in [*sorted(p for p in folder.rglob("*") if p.is_dir()), folder, folder.parent]:
        try:
            fsync_path(path)
        except OSError:
            pass




def save_periodic(state: dict[str, Any], out_dir: Path, step: int, keep: int) -> Path:
    """Write step_<step>.pt, then drop the oldest beyond `keep` (the new one is complete)."""
    path = checkpoint_dir(out_dir) / f"step_{step}.pt"
    write_atomic({"format": FORMAT, **state}, path)
    for _, old in list_checkpoints(out_dir)[:-max(1, keep)]:
        try:
            old.unlink()
        except OSError:
            pass
    return path


def load_newest(out_dir: Path, problem: Callable[[dict[str, Any]], str | None] | None = None
                ) -> tuple[dict[str, Any], Path, list[str]]:
    """The newest checkpoint that reads completely; notes say which newer ones were skipped.
    `problem(state)`: why a checkpoint that reads is still unusable (an engine's files), or
    None."""
    notes: list[str] = []
    folder = checkpoint_dir(out_dir)
    for stale in folder.glob(".step_*.tmp") if folder.is_dir() else ():
        stale.unlink(missing_ok=True)  # a write the kill cut short
    for _step, path in reversed(list_checkpoints(out_dir)):
        try:
            state = safe_torch_load(path)
        except UsageError as exc:
            notes.append(f"skipped {path.name}: {exc}")
            continue
        if not isinstance(state, dict) or state.get("format") != FORMAT or (
                "model" not in state and "engine" not in state):
            notes.append(f"skipped {path.name}: not a complete training checkpoint")
            continue
        why = problem(state) if problem is not None else None
        if why is not None:
            notes.append(f"skipped {path.name}: {why}")
            continue
        return state, path, notes
    where = checkpoint_dir(out_dir)
    raise UsageError(f"--resume {out_dir}: no complete checkpoint in {where}"
                     + (f" ({'; '.join(notes)})" if notes else
                        " (the run wrote none: use --checkpoint-interval N)"))


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
