"""Whether two trainings can be compared on accuracy at all: the same starting weights,
the same schedule (optimizer steps, batch per step) and the same recipe throughout (a run
resumed with another learning rate, `--resume DIR --set lr=...`, is another recipe).

A run from random weights judged against a row measured from an ImageNet backbone, or a
30-step run against rows of the preset's 800 steps, would FAIL as if the hardware were
wrong. `harness check` and `harness parity` answer "not comparable" instead, naming both
sides; speed and memory are still compared (they do not depend on either).

A reference row states what it assumes through its `config` column: `init=random|backbone|
checkpoint` (reference_results/README.md), `steps=N` and `global_batch=N`. A row that
does not state `steps`/`global_batch` assumes the preset's schedule (its steps, its batch
per process). Eval records compare weights that are given, so none of this applies to them.
"""
from __future__ import annotations

from typing import Any

from harness.records import Record

# Row `config` keys that describe how the run trained rather than the model.
START_KEYS = frozenset({"init", "steps", "global_batch"})
INIT_VALUES = ("random", "backbone", "checkpoint")
_INIT_WORDS = {"random": "random weights", "backbone": "a pretrained backbone",
               "checkpoint": "a whole-model checkpoint"}


def describe_init(kind: str) -> str:
    return _INIT_WORDS.get(kind, kind)


def schedule_of(record: Record) -> dict[str, Any] | None:
    """The record's schedule; records from before the field say only their steps."""
    if record.kind != "train":
        return None
    if record.schedule:
        return dict(record.schedule)
    steps = record.throughput.get("total_steps")
    if steps is None:
        return None
    return {"optimizer_steps": steps, "preset_steps": record.workload_config().get("steps") or None}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def per_step_batch(schedule: dict[str, Any]) -> int | None:
    """Samples per optimizer step on each process (batch x accumulation)."""
    batch = _int(schedule.get("batch_size"))
    return None if batch is None else batch * (_int(schedule.get("grad_accum")) or 1)


def row_differences(settings: dict[str, str], record: Record,
                    row_world_size: str = "any") -> list[str]:
    """Why the record's training is not the one the row was measured with; [] if it is.
    `row_world_size`: the row's devices; the preset's batch per process times them is the
    global batch the row assumes (a published 8-GPU row: 8 x the per-GPU batch)."""
    if record.kind != "train":
        return []
    out = []
    want, have = settings.get("init"), record.init()
    if want is not None and want != have:
        out.append(f"the row assumes {describe_init(want)} (init={want}), the run started "
                   f"from {describe_init(have)}")
    changed = record.resumed_changes()
    if changed:
        out.append(f"the run was resumed with other optimizer/schedule settings ({changed}), "
                   f"a recipe the row was not measured with")
    schedule = schedule_of(record)
    if not schedule:
        return out
    steps = _int(schedule.get("optimizer_steps"))
    row_steps = _int(settings["steps"]) if "steps" in settings else _int(
        schedule.get("preset_steps"))
    if steps and row_steps and steps != row_steps:
        whose = "" if "steps" in settings else " (the preset's)"
        out.append(f"the row was measured over {row_steps} optimizer steps{whose}, the run "
                   f"trained {steps}")
    batch = per_step_batch(schedule)
    world = _int(schedule.get("world_size")) or 1
    row_world = _int(row_world_size)
    preset = _int(schedule.get("preset_batch_size"))
    if "global_batch" in settings:
        row_batch = _int(settings["global_batch"])
    elif preset is not None and row_world is not None:
        row_batch = preset * row_world
    else:
        row_batch = None
    if batch is not None and row_batch is not None and batch * world != row_batch:
        out.append(f"the row was measured with a global batch of {row_batch}"
                   + ("" if "global_batch" in settings else
                      f" (the preset's {preset} per device x {row_world})")
                   + f", the run used {batch * world} ({batch} x {world})")
    elif batch is not None and preset is not None and row_batch is None and batch != preset:
        out.append(f"the row was measured with the preset's batch of {preset} per device and "
                   f"step, the run used {batch}")
    return out


def run_differences(a: Record, b: Record) -> list[str]:
    """Why two trainings are not comparable on accuracy (for parity); [] if they are."""
    if a.kind != "train" or b.kind != "train":
        return []
    out = []
    if a.init() != b.init():
        out.append(f"started from {describe_init(a.init())} vs {describe_init(b.init())}")
    if a.resumed_changes() != b.resumed_changes():  # a recipe changed on resume
        out.append(f"resumed with {a.resumed_changes() or 'its recipe'} vs "
                   f"{b.resumed_changes() or 'its recipe'}")
    sa, sb = schedule_of(a), schedule_of(b)
    if sa and sb:
        steps_a, steps_b = _int(sa.get("optimizer_steps")), _int(sb.get("optimizer_steps"))
        if steps_a and steps_b and steps_a != steps_b:
            out.append(f"{steps_a} vs {steps_b} optimizer steps")
        ga, gb = per_step_batch(sa), per_step_batch(sb)
        if ga is not None and gb is not None:
            ga *= _int(sa.get("world_size")) or 1
            gb *= _int(sb.get("world_size")) or 1
            if ga != gb:
                out.append(f"global batch {ga} vs {gb}")
    return out
