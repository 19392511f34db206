"""A tiny workload for host tests: a linear classifier on separable Gaussian blobs.

Knobs (via --set) exercise the runner: `nan_at_step` makes the loss NaN from that step,
`extra_work` adds matmuls per step (a real slowdown for gating tests), `sleep_s` stalls.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from harness import Datasets, Workload, hookimpl


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    batch_size: int = 16
    eval_batch_size: int = 64
    steps: int = 30
    grad_clip: float | None = 10.0
    num_workers: int = 0
    lr: float = 0.1
    classes: int = 3
    features: int = 8
    nan_at_step: int = 0
    extra_work: int = 0
    sleep_s: float = 0.0


def _blobs(n: int, cfg: TinyConfig, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(cfg.classes, cfg.features, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.randint(0, cfg.classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, cfg.features, generator=g)
    return torch.utils.data.TensorDataset(x, y)


class TinyWorkload(Workload):
    name = "tiny"
    description = "linear classifier on Gaussian blobs (host tests)"
    Config = TinyConfig
    metrics = {"accuracy": "higher", "error": "lower"}
    primary_metric = "accuracy"

    def __init__(self, config: TinyConfig, user_set: frozenset[str] = frozenset()) -> None:
        super().__init__(config, user_set)
        self._calls = 0

    @classmethod
    def presets(cls) -> dict[str, TinyConfig]:
        return {"smoke": TinyConfig(), "full": TinyConfig(steps=200, features=32)}

    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        return Datasets(_blobs(512, self.config, 1), _blobs(256, self.config, 2), None, "synthetic")

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(self.config.features, self.config.classes)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.config.lr)

    def loss(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        self._calls += 1
        x, y = batch
        for _ in range(self.config.extra_work):
            x = x + 0.0 * (torch.randn(256, 256) @ torch.randn(256, 256)).mean()
        if self.config.sleep_s:
            time.sleep(self.config.sleep_s)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if self.config.nan_at_step and self._calls >= self.config.nan_at_step:
            loss = loss * float("nan")
        return {"loss_cls": loss, "loss_reg": 0.01 * sum(p.pow(2).sum() for p in model.parameters())}

    def predict(self, model: torch.nn.Module, batch: Any) -> list[Any]:
        x, y = batch
        return list(zip(model(x).argmax(1).cpu().tolist(), y.cpu().tolist()))

    def evaluate(self, predictions: list[Any]) -> dict[str, float]:
        acc = sum(p == t for p, t in predictions) / max(len(predictions), 1)
        return {"accuracy": acc, "error": 1 - acc}


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [TinyWorkload]
