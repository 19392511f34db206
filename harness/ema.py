"""Model EMA: an exponential moving average of the weights, evaluated instead of the raw
model where a recipe says so (BEVDepth's `_ema` experiments and MatrixVT on top of them).

As the originals (BEVDepth bevdepth/callbacks/ema.py, after timm/YOLOX): every floating
entry of the state dict (parameters and BatchNorm statistics) moves towards the model's
after each optimizer step. timm/YOLOX ramp the decay up, `d(n) = decay * (1 - exp(-n /
ramp))`; BEVDepth's EMACallback starts the counter at the schedule's length (ema.py:90), so
its decay is `decay` from the first step: that is the default here (`ramp=None`); a ramp can
be asked for in code. The average is kept in fp32 on the
model's device even when the strategy keeps the weights in bf16/fp16; it is a checkpoint
piece (key `ema`), so a resumed run continues the same average, and the final checkpoint
holds it beside the raw weights (`harness eval` evaluates it, as the run's metrics did).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

RAMP_UPDATES = 2000.0  # timm/YOLOX's ramp: the decay reaches ~63% of its value after 2000 steps


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, ramp: float | None = None) -> None:
        self.decay, self.ramp = float(decay), ramp
        self.model = copy.deepcopy(model).float().eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        if self.ramp is None:
            return self.decay
        return self.decay * (1.0 - math.exp(-self.updates / self.ramp))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One optimizer step's update from `model` (the unwrapped training model)."""
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        for key, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[key].detach().to(value.dtype), alpha=1.0 - d)
            else:  # counters (num_batches_tracked) follow the model
                value.copy_(source[key])

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.model.state_dict(), "updates": self.updates,
                "decay": self.decay, "ramp": self.ramp}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])

    def describe(self) -> dict[str, Any]:
        """The record's `ema` section: what the evaluated weights are."""
        return {"decay": self.decay, "ramp_updates": self.ramp, "updates": self.updates,
                "evaluated": True}
