"""Out of memory as an answer: where it happened, the memory figures, what to turn down."""
from __future__ import annotations

import dataclasses
from typing import Any

from harness.errors import HarnessError


class OutOfMemory(HarnessError):
    """The run ran out of device or host memory (status `oom`, exit 1)."""


def memory_hint(run: Any) -> str:
    """The knobs that lower memory for this run's workload, as one line."""
    cfg, wcfg = run.config, run.workload.config
    batch = getattr(wcfg, "batch_size", None)
    knobs = [f"--batch-size {max(1, batch // 2)}" if isinstance(batch, int) and batch > 1
             else "--batch-size"]
    knobs.append(f"--grad-accum {cfg.grad_accum * 2} (same global batch with half the "
                 f"--batch-size)")
    if cfg.precision == "fp32":
        knobs.append("--precision bf16 (or fp16)")
    if dataclasses.is_dataclass(wcfg) and hasattr(wcfg, "with_cp") and not wcfg.with_cp:
        knobs.append("--set with_cp=true (activation checkpointing)")
    return "to lower memory try: " + ", ".join(knobs)


def describe_oom(run: Any, record: dict[str, Any], progress: dict[str, Any]) -> None:
    """record["oom"]: step, phase, the backend's memory figures at the failure and the hint;
    the hint also leads record["error"] so the console's one line shows it."""
    try:
        figures: dict[str, Any] = dataclasses.asdict(run.backend.memory())
    except Exception as exc:  # noqa: BLE001 - the OOM is the answer; figures are extra
        figures = {"error": repr(exc)}
    limit = getattr(run.backend, "memory_limit_bytes", None)
    if callable(limit):
        try:
            figures["limit_bytes"] = limit()
        except Exception:  # noqa: BLE001
            figures["limit_bytes"] = None
    hint = memory_hint(run)
    record["oom"] = {"step": progress.get("step"), "phase": progress.get("phase"),
                     "memory": figures, "hint": hint}
    where = f"out of memory at step {progress.get('step')} ({progress.get('phase')})"
    record["error"] = f"{where}; {hint}\n{record.get('error') or ''}".rstrip()
