"""One checkpoint manager: a run's state as named pieces, saved and put back through one path.

Every piece of training state is a `Stateful` (`state_dict()` / `load_state_dict(state)`,
the protocol torch's modules, optimizers, schedulers and GradScaler already follow) that owns
a fixed set of top-level keys of the checkpoint file (`keys`). The manager knows the pieces
of a run, which are the same on every rank (model, optimizer, scheduler, scaler, the
strategy's engine, the run's progress) and which are each rank's own (RNG states, data
position, the workload's state, the timer, the loss history and the loop's pending values),
and writes them as one file through the file layer's one writer (harness/checkpoint.py
`write_atomic`). The same `save` serves a single process, DDP (rank 0 writes the shared
pieces plus every rank's share, gathered over the host-side group) and DeepSpeed (the
engine writes its own files first, on every rank; the harness file, written after the
gather, commits them): harness/checkpoint_dist.py has the layout. `load` puts the pieces
back in the order they were registered, so a check (the run's length) comes before any
state changes.

The file layout is the one the checkpoints had before the manager (flat top-level keys,
`format` perception-harness/train-checkpoint/1), so older checkpoints still resume.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

from harness.checkpoint import (
    ResumableBatches,
    capture_rng,
    restore_rng,
    save_periodic,
    to_cpu,
    write_atomic,
)
from harness.config import config_to_dict
from harness.errors import UsageError


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Piece(Stateful, Protocol):
    """A Stateful that names the checkpoint's top-level keys its state_dict() fills."""

    @property
    def keys(self) -> tuple[str, ...]: ...


class Keyed:
    """Any Stateful (a module, optimizer, scheduler, GradScaler, the data position, the
    timer) stored under one key, on the CPU. `obj` None stores None (no scheduler); a stored
    None is not loaded, except where `required` (a model must come back). `optional`: a
    state_dict() that raises is left out (an engine's optimizer in the final checkpoint)."""

    def __init__(self, key: str, obj: Any, *, required: bool = False,
                 optional: bool = False) -> None:
        self.keys = (key,)
        self.obj, self.required, self.optional = obj, required, optional

    def state_dict(self) -> dict[str, Any]:
        if self.obj is None:
            return {} if self.optional else {self.keys[0]: None}
        try:
            return {self.keys[0]: to_cpu(self.obj.state_dict())}
        except Exception:  # noqa: BLE001 - only where the piece is optional
            if not self.optional:
                raise
            return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        value = state.get(self.keys[0])
        if value is None:
            if self.required:
                raise UsageError(f"the checkpoint holds no {self.keys[0]} state")
            return
        if self.obj is not None:
            self.obj.load_state_dict(value)


class RunProgress:
    """Where the run is: step, epoch, micro-steps, its length and what it trains (the
    workload's config, so `harness eval --checkpoint` can build the model). Loaded first:
    a checkpoint of a run of another length is refused before anything changes."""

    keys = ("workload", "step", "epoch", "workload_config", "micro_steps", "total_steps",
            "model_info", "start_weights")  # start_weights: None in older checkpoints

    def __init__(self, run: Any) -> None:
        self.run = run

    def state_dict(self) -> dict[str, Any]:
        run = self.run
        return {"workload": run.config.workload, "step": run.step, "epoch": run.epoch,
                "workload_config": config_to_dict(run.workload.config),
                "micro_steps": run.micro_steps, "total_steps": run.total_steps,
                "model_info": run.model_info, "start_weights": run.start_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        run = self.run
        if state["total_steps"] != run.total_steps:
            raise UsageError(f"checkpoint was written for {state['total_steps']} steps, this "
                             f"run has {run.total_steps}")
        run.step, run.epoch, run.micro_steps = state["step"], state["epoch"], state["micro_steps"]
        run.model_info = state["model_info"]
        run.start_weights = list(state.get("start_weights") or [])


class RunHistory:
    """The record's loss rows and evaluations so far (each rank's own record)."""

    keys = ("losses", "evals")

    def __init__(self, run: Any) -> None:
        self.run = run

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.run.losses), "evals": list(self.run.evals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run.losses, self.run.evals = list(state["losses"]), list(state["evals"])


class RunDuration:
    """The run's wall time so far: the record's duration_s counts every segment."""

    keys = ("elapsed_s",)

    def __init__(self, run: Any) -> None:
        self.run = run

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": time.time() - self.run.started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run.started = time.time() - float(state["elapsed_s"])


class RNGStates:
    """python, numpy, torch CPU and the device's generator. Restored only once the data
    stream has reached the checkpoint's position (reading the consumed batches again may
    draw random numbers), just before the next batch is read."""

    keys = ("rng",)

    def __init__(self, device_type: str, batches: ResumableBatches) -> None:
        self.device_type, self.batches = device_type, batches

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng(self.device_type)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng, device_type = state["rng"], self.device_type
        self.batches.on_position = lambda: restore_rng(rng, device_type)


class WorkloadState:
    """A workload's own state (a temporal memory queue, a running statistic outside the
    model), where it defines `state_dict()` / `load_state_dict(state)`; None otherwise."""

    keys = ("workload_state",)

    def __init__(self, workload: Any, name: str) -> None:
        self.workload, self.name = workload, name

    def state_dict(self) -> dict[str, Any]:
        own = self.workload.state_dict()
        return {"workload_state": None if own is None else to_cpu(own)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("workload_state") is None:
            return
        self.workload.load_state_dict(state["workload_state"])  # the default refuses


class EngineLike(Piece, Protocol):
    """A strategy engine that writes model and optimizer in its own files (DeepSpeed):
    `save_files(step)` runs on every rank before the harness file is gathered and written."""

    def save_files(self, step: int) -> None: ...

    def committed(self) -> None: ...


class CheckpointManager:
    """The pieces of one run's checkpoints and the one path that saves and loads them.

    `strategy`: the run's strategy (rank, world size, gathering the per-rank shares); None
    for a single process. `keep`: how many periodic checkpoints stay.
    """

    def __init__(self, out_dir: Path, strategy: Any = None, keep: int = 2) -> None:
        self.out_dir, self.strategy, self.keep = Path(out_dir), strategy, keep
        self.shared: list[Piece] = []
        self.per_rank: list[Piece] = []
        self.engine: EngineLike | None = None
        self._order: list[Piece] = []

    def register(self, *pieces: Piece, per_rank: bool = False) -> CheckpointManager:
        """Add pieces (loaded in this order). `per_rank`: the state differs between ranks
        and each rank's share is kept; otherwise rank 0's copy is every rank's."""
        taken = {key for piece in self._order for key in piece.keys}
        for piece in pieces:
            clash = taken.intersection(piece.keys)
            if clash:
                raise ValueError(f"checkpoint keys registered twice: {sorted(clash)}")
            taken.update(piece.keys)
            (self.per_rank if per_rank else self.shared).append(piece)
            self._order.append(piece)
        return self

    def register_engine(self, engine: EngineLike) -> CheckpointManager:
        self.register(engine)
        self.engine = engine
        return self

    @property
    def rank_keys(self) -> tuple[str, ...]:
        return tuple(key for piece in self.per_rank for key in piece.keys)

    def state_dict(self, pieces: Iterable[Piece] | None = None) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for piece in self._order if pieces is None else pieces:
            state.update(piece.state_dict())
        return state

    def save(self, step: int) -> Path | None:
        """Write checkpoints/step_<step>.pt with every rank taking part (the engine's files
        and the per-rank shares are collectives); the path on rank 0, None on the others."""
        world_size = 1 if self.strategy is None else int(self.strategy.world_size)
        if self.engine is not None:
            self.engine.save_files(step)
        share = self.state_dict(self.per_rank)
        if world_size > 1:
            shares = self.strategy.gather_to_main(share)
            if shares is None:  # not rank 0: its share is in rank 0's hands now
                return None
            # The shared pieces are replicated: only rank 0 reads them, after the gather.
            state = {**self.state_dict(self.shared), "world_size": world_size,
                     "ranks": shares}
        else:
            state = {**self.state_dict(self.shared), **share}
        path = save_periodic(state, self.out_dir, step, self.keep)
        if self.engine is not None:
            self.engine.committed()
        return path

    def load(self, state: dict[str, Any]) -> None:
        """Put a checkpoint back (this rank's view: harness/checkpoint_dist.state_for_rank)."""
        for piece in self._order:
            piece.load_state_dict({key: state.get(key) for key in piece.keys})

    def write(self, path: Path) -> None:
        """Every piece in one file at `path` (the final checkpoint.pt)."""
        write_atomic(self.state_dict(), path)


class FinalInfo:
    """What the final checkpoint.pt says about its weights (harness/safe_load.py reads it)."""

    keys = ("step", "workload", "workload_config")

    def __init__(self, run: Any, workload_config: dict[str, Any] | None) -> None:
        self.run, self.workload_config = run, workload_config

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.run.step, "workload": self.run.config.workload,
                "workload_config": self.workload_config}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["workload"] != self.run.config.workload:
            raise UsageError(f"a checkpoint of workload {state['workload']}, this run trains "
                             f"{self.run.config.workload}")
        self.run.step = int(state["step"])


def final_checkpoint(run: Any, workload_config: dict[str, Any] | None,
                     folder: Path) -> CheckpointManager:
    """The final checkpoint.pt's pieces: the trained weights, what they are, and the
    optimizer's state where the strategy lets it be read (an engine may keep it elsewhere)."""
    return CheckpointManager(folder).register(
        Keyed("model", run.trained_model, required=True), FinalInfo(run, workload_config),
        Keyed("optimizer", run.optimizer, optional=True), Keyed("ema", run.ema, optional=True))


def training_checkpoints(run: Any, *, host_model: Any, optimizer: Any, scheduler: Any,
                         scaler: Any, batches: ResumableBatches, timer: Stateful, loop: Piece,
                         keep: int, ema: Any = None) -> CheckpointManager:
    """The pieces of a training run's periodic checkpoints. `host_model`: the unwrapped
    model (DDP's wrapper shares its parameters); where the strategy's engine keeps model and
    optimizer (DeepSpeed) the engine's files take their place. `loop`: the training loop's
    own state (the loss terms not yet logged, the memory peaks so far)."""
    from harness.checkpoint_dist import EngineFiles, saves_through_engine

    strategy = run.strategy
    manager = CheckpointManager(run.out_dir, strategy, keep).register(RunProgress(run))
    if saves_through_engine(strategy):
        manager.register_engine(EngineFiles(strategy, run.out_dir))
    else:
        manager.register(Keyed("model", host_model, required=True),
                         Keyed("optimizer", optimizer, required=True))
    manager.register(Keyed("scheduler", scheduler), Keyed("scaler", scaler), Keyed("ema", ema))
    return manager.register(
        RNGStates(run.backend.device_type, batches), Keyed("data", batches, required=True),
        WorkloadState(run.workload, run.config.workload), loop, RunHistory(run),
        Keyed("timer", timer, required=True), RunDuration(run), per_rank=True)
