"""Test-only plugin for the distributed tests: the tiny workload with eyes on DDP.

`tiny_probe` is the tiny linear classifier plus a constant buffer (not a batch statistic: it
never changes, but DDP broadcasts module buffers from rank 0 on every forward it syncs, as for
a BatchNorm model); its predict() uses the module's own layers. The plugin records, on each
rank, the weights after every optimizer step and how many gradient all-reduces DDP had issued
by then (a counting comm hook), and saves them to `<out>/probe.rank<R>.pt` at the end.
"""
from __future__ import annotations

from typing import Any

import torch

from harness import hookimpl
from tests.tiny_workload import TinyWorkload


class _ProbeModel(torch.nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(features, classes)
        self.register_buffer("offset", torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x + self.offset)


class ProbeWorkload(TinyWorkload):
    name = "tiny_probe"
    description = "tiny workload recording weights and DDP all-reduces per step (tests)"

    def build_model(self) -> torch.nn.Module:
        self.probe_model = _ProbeModel(self.config.features, self.config.classes)
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.allreduce_counts: list[int] = []
        self.allreduces = 0
        self._hooked = False
        return self.probe_model

    def loss(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        if not self._hooked:
            self._hooked = True
            if isinstance(model, torch.nn.parallel.DistributedDataParallel):
                model.register_comm_hook(None, self._counting_allreduce())
        return super().loss(model, batch)

    def predict(self, model: torch.nn.Module, batch: Any) -> list[Any]:
        # Reaches into the workload's own module, as real predict() code does (decoders,
        # anchors): evaluation must hand it the unwrapped model, never the DDP wrapper.
        x, y = batch
        logits = model.linear(x + model.offset)
        return list(zip(logits.argmax(1).cpu().tolist(), y.cpu().tolist()))

    def _counting_allreduce(self) -> Any:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def hook(state, bucket):  # noqa: ANN001 - DDP checks the annotations: none or its own
            self.allreduces += 1
            return allreduce_hook(None, bucket)

        return hook


@hookimpl
def harness_workloads() -> list[type[TinyWorkload]]:
    return [ProbeWorkload]


@hookimpl
def harness_step_end(run: Any, step: int) -> None:
    wl = run.workload
    if isinstance(wl, ProbeWorkload):
        wl.snapshots.append({k: v.detach().clone() for k, v in wl.probe_model.state_dict().items()})
        wl.allreduce_counts.append(wl.allreduces)


@hookimpl
def harness_run_end(run: Any, record: dict[str, Any]) -> None:
    wl = run.workload
    if isinstance(wl, ProbeWorkload) and getattr(wl, "snapshots", None):
        torch.save({"snapshots": wl.snapshots, "allreduces": wl.allreduce_counts},
                   run.out_dir / f"probe.rank{run.strategy.rank}.pt")
