"""A test-only workload for backend tests: a tiny conv + linear net on its own synthetic data.

Registered through HARNESS_PLUGINS=tests.emulated_workload. Its loss checks what the harness
promises on an accelerator and remembers what it saw:
- batch and parameters live on the run's device (HARNESS_TEST_EXPECT_DEVICE, if set);
- under autocast for that device type, the linear output really has the autocast dtype.
`--set stray=cuda` adds a stray `.cuda()`, `--set stray=cpu` mixes in a tensor made without
`device=`: the portability bugs an emulated device must catch.

With HARNESS_TEST_PROBE=<path>, a run-end hook writes what was seen, the strategy's optimizer
step count and the emulated device's counters (mark_step calls...) to that JSON file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from harness import Datasets, Workload, hookimpl


@dataclasses.dataclass(frozen=True)
class EmuConfig:
    batch_size: int = 8
    eval_batch_size: int = 16
    steps: int = 4
    grad_clip: float | None = 5.0
    num_workers: int = 0
    lr: float = 0.05
    stray: str = ""  # "", "cuda" or "cpu"


class _Blobs(torch.utils.data.Dataset):
    """8x8 RGB images; the class is whether channel 0 is brighter than channel 1."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.randn(n, 3, 8, 8, generator=g) * 0.5
        self.x[:, 0] += (self.y.float() * 2 - 1).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(h)


class EmulatedTinyWorkload(Workload):
    name = "emu_tiny"
    description = "tiny conv+linear classifier (backend and emulated-device tests)"
    Config = EmuConfig
    metrics = {"accuracy": "higher"}
    primary_metric = "accuracy"

    def __init__(self, config: EmuConfig) -> None:
        super().__init__(config)
        self.seen: dict[str, Any] = {"devices": [], "autocast": [], "calls": 0}

    @classmethod
    def presets(cls) -> dict[str, EmuConfig]:
        return {"smoke": EmuConfig(), "full": EmuConfig(steps=50)}

    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        return Datasets(_Blobs(64, 1), _Blobs(32, 2), None, "synthetic:in-memory")

    def build_model(self) -> torch.nn.Module:
        return _Net()

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.config.lr, momentum=0.9)

    def loss(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"]
        param = next(model.parameters())
        self.seen["calls"] += 1
        self._note("devices", f"{x.device.type}/{param.device.type}")
        expected = os.environ.get("HARNESS_TEST_EXPECT_DEVICE")
        if expected:
            assert x.device.type == expected and param.device.type == expected, \
                f"batch on {x.device}, params on {param.device}, expected {expected}"
        if self.config.stray == "cuda":
            x = x.cuda()  # the bug under test: a hard-coded device
        elif self.config.stray == "cpu":
            x = x + torch.ones(x.shape)  # the bug under test: a tensor made without device=
        logits = model(x)
        kind = x.device.type
        if torch.is_autocast_enabled(kind):
            want = torch.get_autocast_dtype(kind)
            assert logits.dtype == want, f"autocast({kind}) linear output is {logits.dtype}, not {want}"
            self._note("autocast", f"{kind}:{logits.dtype}")
        else:
            self._note("autocast", f"off:{logits.dtype}")
        return {"loss_cls": torch.nn.functional.cross_entropy(logits.float(), y)}

    def _note(self, key: str, value: str) -> None:
        if value not in self.seen[key]:
            self.seen[key].append(value)

    def predict(self, model: torch.nn.Module, batch: Any) -> list[Any]:
        pred = model(batch["x"]).argmax(1).cpu().tolist()
        return list(zip(pred, batch["y"].cpu().tolist(), strict=True))

    def evaluate(self, predictions: list[Any]) -> dict[str, float]:
        return {"accuracy": sum(p == t for p, t in predictions) / max(len(predictions), 1)}


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [EmulatedTinyWorkload]


@hookimpl
def harness_run_end(run: Any, record: dict[str, Any]) -> None:
    path = os.environ.get("HARNESS_TEST_PROBE")
    if not path:
        return
    probe: dict[str, Any] = {
        "workload": run.config.workload,
        "seen": getattr(run.workload, "seen", None),
        "strategy": run.strategy.name,
        "optimizer_steps_taken": (run.strategy.optimizer_steps_taken(run.optimizer, -1)
                                  if run.optimizer is not None else None),
        "runner_steps": run.step,
        "micro_steps": run.micro_steps,
    }
    dynamo = sys.modules.get("torch._dynamo.utils")
    if dynamo is not None:  # did torch.compile really capture graphs?
        probe["dynamo_unique_graphs"] = dynamo.counters["stats"]["unique_graphs"]
    emulation = sys.modules.get("backends.emulation")
    if emulation is not None and emulation.installed():
        probe["emulation"] = {k: emulation.STATS[k] for k in ("device", "mark_step", "ops",
                                                              "autocast_casts", "synchronize")}
    Path(path).write_text(json.dumps(probe, indent=1, default=str))
