"""The part of a workload's Config the host reads. A leaf module without torch, so that
workload config modules (imported by `--help` and the report verbs) stay light."""
from __future__ import annotations

from typing import Any, ClassVar


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
    # Starting weights (harness/start_weights.py), read in the layouts the workload declares:
    backbone_weights: str = ""  # a pretrained backbone file; "": random init
    init_checkpoint: str = ""  # a whole-model checkpoint (an original's release or a run's)
    ema_decay: float = 0.0  # model EMA evaluated instead of the raw weights (harness/ema.py); 0: off
    # A tuple[str, ...] field that takes every `--set KEY=VALUE` whose KEY no field declares,
    # as "KEY=VALUE" (an OpenMMLab config's cfg-options); "": unknown keys are refused.
    passthrough_field: ClassVar[str] = ""

    def validate(self) -> None:
        """The model's own rules across fields (ConfigError via harness.config.require);
        called after the generic range checks. Default: none."""


def declared_field(config: object, name: str) -> Any:
    """A field the host reads, from a config that may predate it: a plugin's Config written
    before the field existed gets WorkloadConfig's default instead of an AttributeError."""
    return getattr(config, name, getattr(WorkloadConfig, name))
