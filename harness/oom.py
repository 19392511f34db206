"""Out of memory as an answer: where it happened, the memory figures, what to turn down."""
from __future__ import annotations

import dataclasses
from typing import Any

from harness.errors import HarnessError


class OutOfMemory(HarnessError):
    """The run ran out of device or host memory (status `oom`, exit 1)."""


def memory_hint(run: Any, phase: str | None = None) -> str:
    """The knobs that lower memory for this run's workload, as one line; an OOM in an
    evaluation names the evaluation's batch size, not the training's."""
    cfg, wcfg = run.config, run.workload.config
    if phase == "evaluation":
        batch = cfg.eval_batch_size or wcfg.eval_batch_size
        return "to lower memory try: " + _halve("--eval-batch-size", batch)
    batch = wcfg.batch_size
    knobs = [_halve("--batch-size", batch)]
    knobs.append(f"--grad-accum {cfg.grad_accum * 2} (same global batch with half the "
                 f"--batch-size)")
    if cfg.precision == "fp32":
        knobs.append("--precision bf16 (or fp16)")
    knobs += run.workload.memory_hints()
    return "to lower memory try: " + ", ".join(knobs)


def eval_memory_hint(batch_size: int | None, precision: str) -> str:
    """`harness eval`'s knobs: its own --batch-size, a lower precision."""
    knobs = [_halve("--batch-size", batch_size)]
    if precision == "fp32":
        knobs.append("--precision bf16 (or fp16)")
    return "to lower memory try: " + ", ".join(knobs)


def _halve(flag: str, batch: Any) -> str:
    return f"{flag} {max(1, batch // 2)}" if isinstance(batch, int) and batch > 1 else flag


def describe_oom(record: Any, backend: Any, progress: dict[str, Any], hint: str) -> None:
    """record.oom: step, phase, the backend's memory figures at the failure and the hint;
    the hint also leads record.error so the console's one line shows it."""
    try:
        figures: dict[str, Any] = dataclasses.asdict(backend.memory())
    except Exception as exc:  # noqa: BLE001 - the OOM is the answer; figures are extra
        figures = {"error": repr(exc)}
    record.oom = {"step": progress.get("step"), "phase": progress.get("phase"),
                  "memory": figures, "hint": hint}
    step = progress.get("step")
    where = (f"out of memory at step {step} ({progress.get('phase')})" if step is not None
             else f"out of memory ({progress.get('phase') or 'before the first step'})")
    record.error = f"{where}; {hint}\n{record.error or ''}".rstrip()
