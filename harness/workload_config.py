"""The part of a workload's Config the host reads. A leaf module without torch, so that
workload config modules (imported by `--help` and the report verbs) stay light."""
from __future__ import annotations


class WorkloadConfig:
    """The fields of a workload's Config that the host reads, with the value it assumes
    where a Config leaves one out. A workload's `Config` is a frozen dataclass deriving from
    this class and declaring these fields with its own defaults. Not a dataclass itself: a
    Config's field order (its record, its `--set` keys) stays its own."""

    batch_size: int = 1  # training batch per process (--batch-size)
    eval_batch_size: int = 1  # evaluation batch (--eval-batch-size)
    steps: int = 0  # optimizer steps of a run without --steps/--epochs; 0: one epoch
    grad_clip: float | None = None  # max grad norm; None or 0: no clipping
    num_workers: int = 0  # DataLoader worker processes (--workers)

    def validate(self) -> None:
        """The model's own rules across fields (ConfigError via harness.config.require);
        called after the generic range checks. Default: none."""
