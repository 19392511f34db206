"""A tiny workload using the optional Workload contracts (tests of the harness side).

- config from data: the synthetic data has 4 classes (a meta.json beside it); `classes`
  follows the data unless the user set it, and a contradicting explicit value is an error;
- its own training batch sampler: in-order batches of this rank's shard, set_epoch recorded;
- a predictions file: the (predicted, true) pairs as JSON, scored by `score_file`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from harness import DatasetError, Datasets, Workload, hookimpl
from tests.tiny_workload import TinyConfig, TinyWorkload, _blobs

DATA_CLASSES = 4


class InOrderBatches:
    """Batches of consecutive indices of this rank's contiguous shard; records set_epoch."""

    def __init__(self, n: int, batch_size: int, world_size: int, rank: int) -> None:
        per_rank = n // world_size
        self.indices = list(range(rank * per_rank, (rank + 1) * per_rank))
        self.batch_size = batch_size
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def __iter__(self):
        for b in range(len(self)):
            yield self.indices[b * self.batch_size:(b + 1) * self.batch_size]


class ContractWorkload(TinyWorkload):
    name = "tiny-contracts"

    def __init__(self, config: TinyConfig, user_set: frozenset[str] = frozenset()) -> None:
        super().__init__(config, user_set)
        self.sampler: InOrderBatches | None = None
        self.seen: list[list[int]] = []

    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        cache_dir.mkdir(parents=True, exist_ok=True)
        meta = cache_dir / "meta.json"
        meta.write_text(json.dumps({"classes": DATA_CLASSES}))
        from_data = {}
        if "classes" in self.user_set:
            if self.config.classes != DATA_CLASSES:
                raise DatasetError(f"{meta}: field 'classes' is {DATA_CLASSES} but the config "
                                   f"has classes={self.config.classes}")
        else:
            self.config = dataclasses.replace(self.config, classes=DATA_CLASSES)
            from_data["classes"] = str(meta)

        def with_index(ds: torch.utils.data.TensorDataset) -> torch.utils.data.TensorDataset:
            x, y = ds.tensors
            return torch.utils.data.TensorDataset(x, y, torch.arange(len(y)))

        return Datasets(with_index(_blobs(512, self.config, 1)),
                        with_index(_blobs(256, self.config, 2)), None, str(cache_dir),
                        from_data=from_data)

    def train_batch_sampler(self, dataset: Any, batch_size: int, world_size: int, rank: int,
                            seed: int) -> InOrderBatches:
        self.sampler = InOrderBatches(len(dataset), batch_size, world_size, rank)
        return self.sampler

    def loss(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y, idx = batch
        self.seen = [*self.seen, idx.tolist()]  # rebinding: a shallow copy never adds to ours
        return super().loss(model, (x, y))

    def predict(self, model: torch.nn.Module, batch: Any) -> list[Any]:
        x, y, _ = batch
        return super().predict(model, (x, y))

    def write_predictions(self, predictions: list[Any], out_dir: Path) -> dict[str, Any]:
        path = out_dir / "tiny_results.json"
        path.write_text(json.dumps([{"pred": p, "true": t} for p, t in predictions]))
        return {"format": "tiny-results", "path": str(path), "split": "val",
                "ground_truth": "synthetic blobs, seed 2"}


def score_file(path: Path) -> float:
    rows = json.loads(Path(path).read_text())
    return sum(r["pred"] == r["true"] for r in rows) / len(rows)


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [ContractWorkload]


@hookimpl
def harness_run_end(run: Any, record: dict[str, Any]) -> None:
    wl = run.workload
    if isinstance(wl, ContractWorkload):
        (run.out_dir / "contract_probe.json").write_text(json.dumps({
            "user_set": sorted(wl.user_set), "seen": wl.seen,
            "epochs": wl.sampler.epochs if wl.sampler else None}))
