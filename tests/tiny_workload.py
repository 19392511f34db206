"""A tiny workload for host tests: a linear classifier on separable Gaussian blobs.

Knobs (via --set) exercise the runner: `nan_at_step` makes the loss NaN from that step,
`nan_grad_at_step` makes the gradients NaN (finite loss) from that step, `extra_work` adds
matmuls per step (a real slowdown for gating tests), `sleep_s` stalls each loss
(every `sleep_every`-th only, for uneven steps),
`eval_sleep_s` each evaluation, `load_sleep_s` each batch's collation (the loader) and
`copy_sleep_s` each batch's host->device copy.
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
    nan_grad_at_step: int = 0
    eval_sleep_s: float = 0.0
    load_sleep_s: float = 0.0
    copy_sleep_s: float = 0.0
    sleep_every: int = 1  # sleep_s stalls every Nth loss only (uneven steps)
    ema_decay: float = 0.0  # model EMA (harness/ema.py)


def _blobs(n: int, cfg: TinyConfig, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(cfg.classes, cfg.features, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.randint(0, cfg.classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, cfg.features, generator=g)
    return torch.utils.data.TensorDataset(x, y)


class _SlowCopy(torch.Tensor):
    """A batch tensor whose device copy (`.to`) takes `delay` seconds longer."""

    delay = 0.0

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = super().__torch_function__(func, types, args, kwargs or {})
        if func is torch.Tensor.to:
            time.sleep(cls.delay)
        return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out


def _collate(cfg: TinyConfig) -> Any:
    if not (cfg.load_sleep_s or cfg.copy_sleep_s):
        return None
    _SlowCopy.delay = cfg.copy_sleep_s

    def collate(items: list[Any]) -> Any:
        time.sleep(cfg.load_sleep_s)
        x, y = torch.utils.data.default_collate(items)
        return (x.as_subclass(_SlowCopy), y) if cfg.copy_sleep_s else (x, y)

    return collate


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
        return Datasets(_blobs(512, self.config, 1), _blobs(256, self.config, 2),
                        _collate(self.config), "synthetic")

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(self.config.features, self.config.classes)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.config.lr)

    def loss(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        self._calls += 1
        x, y = batch
        for _ in range(self.config.extra_work):
            x = x + 0.0 * (torch.randn(256, 256) @ torch.randn(256, 256)).mean()
        if self.config.sleep_s and self._calls % max(self.config.sleep_every, 1) == 0:
            time.sleep(self.config.sleep_s)
        logits = model(x)
        if self.config.nan_grad_at_step and self._calls >= self.config.nan_grad_at_step:
            logits.register_hook(lambda grad: grad * float("nan"))
        loss = torch.nn.functional.cross_entropy(logits, y)
        if self.config.nan_at_step and self._calls >= self.config.nan_at_step:
            loss = loss * float("nan")
        return {"loss_cls": loss, "loss_reg": 0.01 * sum(p.pow(2).sum() for p in model.parameters())}

    def predict(self, model: torch.nn.Module, batch: Any) -> list[Any]:
        x, y = batch
        return list(zip(model(x).argmax(1).cpu().tolist(), y.cpu().tolist()))

    def evaluate(self, predictions: list[Any]) -> dict[str, float]:
        time.sleep(self.config.eval_sleep_s)
        acc = sum(p == t for p, t in predictions) / max(len(predictions), 1)
        return {"accuracy": acc, "error": 1 - acc}


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [TinyWorkload]
