"""`harness run --resume DIR`: the recorded config, the newest checkpoint, the training state.

What goes into a periodic checkpoint and how it is put back is the checkpoint manager's
(harness/checkpointing.py): the training loop registers its pieces once, after building
model, optimizer, scheduler and scaler, and loads the checkpoint found here through it.

Workloads with state of their own (a temporal memory queue, a running statistic outside the
model) may define `state_dict() -> dict` (tensors and plain values) and
`load_state_dict(state)`; the harness stores it in every checkpoint and restores it on resume
(under DDP, each rank's own: harness/checkpoint_dist.py). A resumed run has the recorded
number of processes; DeepSpeed's model and optimizer come back through its engine.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.checkpoint import load_newest
from harness.checkpoint_dist import engine_problem, state_for_rank
from harness.config import RunConfig, is_masked
from harness.errors import UsageError
from harness.records import Record, read_record
from harness.resume_changes import changed_fields, may_change_on_resume

# Options that may differ on resume: they do not change what the run computes.
_MAY_DIFFER = {"checkpoint_interval", "keep_checkpoints", "out"}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def recorded_config(run_dir: Path) -> tuple[RunConfig, Record]:
    """The RunConfig the record in `run_dir` names, and the record itself."""
    path = Path(run_dir) / "record.json"
    if not path.is_file():
        raise UsageError(f"--resume {run_dir}: no record.json there (not a run folder)")
    try:
        record = read_record(path)
    except UsageError as exc:
        raise UsageError(f"--resume {run_dir}: unreadable record.json ({exc})") from None
    saved = record.run_config()
    if record.kind != "train":
        raise UsageError(f"--resume {run_dir}: the record is a {record.kind} record")
    if record.status == "ok":
        last = record.throughput.get("optimizer_steps")
        raise UsageError(f"--resume {run_dir}: that run already finished (status ok"
                         f"{f' at step {last}' if last is not None else ''}); nothing to resume")
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    kwargs: dict[str, Any] = {}
    for name, value in saved.items():
        if name not in fields:
            continue
        if name in ("data", "out", "cache_dir") and value is not None:
            value = Path(value)
        elif name == "overrides":
            value = tuple(value)
        elif name == "plugin_options":
            # A masked password (RunConfig.to_dict) is not restored: the option falls back
            # to its default (MLflow's URI: $MLFLOW_TRACKING_URI), which holds the secret.
            value = tuple(tuple(item) for item in value if not is_masked(item[1]))
        kwargs[name] = value
    kwargs["out"] = Path(run_dir)
    return RunConfig(**kwargs), record


def resumed_config(run_dir: Path, given: dict[str, Any]) -> tuple[RunConfig, Record]:
    """The recorded config with the harmless options in `given` applied, and `--set` of
    optimizer/schedule fields appended to its overrides; options given on the command line
    that would change the run otherwise are refused with the differing keys."""
    config, record = recorded_config(run_dir)
    given = dict(given)
    new_overrides = tuple(given.pop("overrides", ()))
    if new_overrides:
        _check_resume_overrides(run_dir, record, new_overrides)
        config = dataclasses.replace(config, overrides=config.overrides + new_overrides)
    differing = sorted(k for k, v in given.items() if k not in _MAY_DIFFER
                       and hasattr(config, k) and _plain(getattr(config, k)) != _plain(v))
    if differing:
        detail = ", ".join(f"{k}: recorded {_plain(getattr(config, k))!r}, given "
                           f"{_plain(given[k])!r}" for k in differing)
        raise UsageError(f"--resume {run_dir}: options differ from the recorded run ({detail}); "
                         f"a resumed run keeps its config (start a new run to change it)")
    keep = {k: v for k, v in given.items() if k in _MAY_DIFFER and k != "out"}
    return dataclasses.replace(config, **keep), record


def _check_resume_overrides(run_dir: Path, record: Record, overrides: tuple[str, ...]) -> None:
    """`--set` on resume: optimizer and schedule fields only (harness/resume_changes.py),
    and not through DeepSpeed, whose engine restores its optimizer's settings itself."""
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    fixed = [k for k in keys if "." in k or not may_change_on_resume(k)]
    if fixed:
        raise UsageError(f"--resume {run_dir}: --set {fixed[0]} cannot change on resume (only "
                         f"optimizer and schedule fields may, e.g. --set lr=...); start a new "
                         f"run to change it")
    if record.strategy == "deepspeed":
        raise UsageError(f"--resume {run_dir}: --set {keys[0]} on a DeepSpeed run is not "
                         f"supported (its engine restores the optimizer's settings from its "
                         f"own checkpoint); resume without --set")


def find_checkpoint(run_dir: Path) -> tuple[dict[str, Any], Path, list[str]]:
    return load_newest(run_dir, lambda state: engine_problem(run_dir, state))


def check_world_size(run_dir: Path, record: Record, world_size: int) -> None:
    """A resumed run has as many processes as the recorded one (exit 2 otherwise): the data
    shards, RNG streams and per-rank workload states belong to those ranks."""
    recorded = record.world_size or 1
    if recorded != world_size:
        hint = f"--nproc {recorded}" if recorded > 1 else "no --nproc"
        raise UsageError(f"--resume {run_dir}: options differ from the recorded run "
                         f"(world_size: recorded {recorded}, given {world_size}); resume "
                         f"with {hint} (x --nnodes), as recorded")


def resume_checkpoint(config: RunConfig, run_dir: Path | None
                      ) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint a resumed run starts from, and a line saying which (None: a new run)."""
    if run_dir is None:
        return None, ""
    recorded_config(run_dir)  # refuses a finished run
    state, path, notes = find_checkpoint(run_dir)
    # Every rank reads the same file and keeps the shared part plus its own share.
    state = state_for_rank(state, int(os.environ.get("RANK", "0")),
                           int(os.environ.get("WORLD_SIZE", "1")), path)
    if state.get("workload") != config.workload:
        raise UsageError(f"{path}: a checkpoint of workload {state.get('workload')}, "
                         f"the record says {config.workload}")
    note = f"resuming {run_dir} from {path.name} (step {state['step']})"
    if notes:
        note += "; " + "; ".join(notes)
    if os.environ.get("RANK", "0") == "0":  # once per run, not once per rank
        print(f"[harness] {note}", file=sys.stderr, flush=True)
    return state, note


def continued_record(run_dir: Path, state: dict[str, Any] | None, note: str,
                     workload_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields a resumed run keeps from the record it continues, plus this resumption
    (with the optimizer/schedule fields `workload_config` changes from the checkpoint's,
    as `changed`: {field: [old, new]}). Each rank continues its own record (rank 0 may
    already have rewritten record.json)."""
    _, old = recorded_config(run_dir)
    rank = int(os.environ.get("RANK", "0"))
    own = Path(run_dir) / f"record.rank{rank}.json"
    if rank != 0 and own.is_file():
        try:
            old = read_record(own)
        except UsageError:
            pass  # unreadable: rank 0's fields will do for the record's history
    assert state is not None
    resumed = list(old.resumed_from or [])
    entry: dict[str, Any] = {"step": int(state["step"]),
                             "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "previous_status": old.status, "note": note}
    changes = changed_fields(workload_config or {}, state.get("workload_config") or {})
    if changes:
        entry["changed"] = changes
    resumed.append(entry)
    return {"started_at": old.started_at, "resumed_from": resumed,
            "losses": list(state["losses"]), "evals": list(state["evals"])}
