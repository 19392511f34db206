"""What the harness's loop needs from an OpenMMLab model beyond its registries: the loss
terms summed as mmengine sums them, and the config's parameter schedulers as one
checkpointable scheduler."""
from __future__ import annotations

from typing import Any

import torch


def normalise_losses(raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    """mmengine's rule: only keys containing 'loss' are summed into the loss; a per-level
    list counts as the sum of its means; a tensor as its mean. Other entries (accuracies)
    are not losses and are left out of the sum the harness takes."""
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if "loss" not in key:
            continue
        if isinstance(value, torch.Tensor):
            out[key] = value.mean()
        elif isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
            out[key] = torch.stack([v.mean() for v in value]).sum()
        else:
            raise TypeError(f"loss term {key} is {type(value).__name__}, not a tensor or a "
                            f"list of tensors")
    return out


class SchedulerChain:
    """mmengine parameter schedulers stepped together once per optimizer step (the runner
    steps iteration-based ones per iteration; epoch-based ones were converted to
    iteration-based with the epoch length), with one state dict for checkpoints."""

    def __init__(self, schedulers: list[Any]) -> None:
        self.schedulers = schedulers

    def step(self) -> None:
        for s in self.schedulers:
            s.step()

    def state_dict(self) -> dict[str, Any]:
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, sd in zip(self.schedulers, state["schedulers"]):
            s.load_state_dict(sd)

    def get_last_lr(self) -> list[float]:
        return [float(v) for v in self.schedulers[-1].get_last_value()]
