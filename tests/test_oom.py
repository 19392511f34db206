"""Out of memory is an answer: status `oom`, the step and phase, memory figures, one hint.

This module is also a plugin (HARNESS_PLUGINS): `tiny_oom` raises the device's OOM error
(torch.OutOfMemoryError) in its forward, or the CPU allocator's error in the backward,
at a chosen step.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import hookimpl
from harness.cli import main
from tests.tiny_workload import TinyConfig, TinyWorkload


@dataclasses.dataclass(frozen=True)
class OomConfig(TinyConfig):
    oom_at_step: int = 3
    oom_kind: str = "device"  # "device": forward raises OutOfMemoryError; "cpu": backward;
    # "eval": the predictions of the final evaluation raise OutOfMemoryError
    with_cp: bool = False


def _cpu_allocator_failure(grad: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                       "can't allocate memory: you tried to allocate 68719476736 bytes.")


class OomWorkload(TinyWorkload):
    name = "tiny_oom"
    Config = OomConfig

    def memory_hints(self) -> list[str]:  # the declared hook, as streampetr's
        return [] if self.config.with_cp else ["--set with_cp=true (activation checkpointing)"]

    @classmethod
    def presets(cls) -> dict[str, OomConfig]:
        return {"smoke": OomConfig(), "full": OomConfig()}

    def loss(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        terms = super().loss(model, batch)
        # The FLOPs count calls a shallow copy (its own count): training step N is call N.
        if self._calls == self.config.oom_at_step and self.config.oom_kind != "eval":
            if self.config.oom_kind == "device":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            terms["loss_cls"].register_hook(_cpu_allocator_failure)
        return terms


    def predict(self, model: torch.nn.Module, batch: Any) -> list[Any]:
        if self.config.oom_kind == "eval":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return super().predict(model, batch)


@hookimpl
def harness_workloads() -> list[type]:
    return [OomWorkload]


@pytest.fixture(autouse=True)
def _oom_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import plugins

    monkeypatch.setenv("HARNESS_PLUGINS", "tests.tiny_workload,tests.test_oom")
    plugins.get_plugin_manager.cache_clear()


def test_device_oom_in_forward_is_status_oom_with_step_phase_memory_and_hint(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", "tiny_oom", "--steps", "6", "--out", str(out)]) == 1
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "oom"
    oom = record["oom"]
    assert oom["step"] == 3 and oom["phase"] == "forward"
    assert "host_peak_rss_bytes" in oom["memory"] and oom["memory"]["source"]
    assert oom["hint"].startswith("to lower memory try: --batch-size 8, --grad-accum 2")
    assert "--precision bf16" in oom["hint"] and "--set with_cp=true" in oom["hint"]
    assert record["error"].startswith("out of memory at step 3 (forward); to lower memory")


def test_cpu_allocator_failure_in_backward_is_oom(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", "tiny_oom", "--steps", "6", "--set", "oom_kind=cpu",
                 "--set", "with_cp=true", "--precision", "bf16", "--out", str(out)]) == 1
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "oom"
    assert (record["oom"]["step"], record["oom"]["phase"]) == (3, "backward")
    # Knobs already turned are not suggested again.
    assert "with_cp" not in record["oom"]["hint"] and "--precision" not in record["oom"]["hint"]


def test_oom_in_the_final_evaluation_hints_the_eval_batch_size(tmp_path: Path) -> None:
    """Issue 24: the hint named --batch-size (training's), which the evaluation does not use."""
    out = tmp_path / "run"
    assert main(["run", "tiny_oom", "--steps", "2", "--set", "oom_kind=eval",
                 "--eval-batch-size", "6", "--out", str(out)]) == 1
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "oom" and record["oom"]["phase"] == "evaluation"
    assert record["oom"]["hint"] == "to lower memory try: --eval-batch-size 3"
    assert (out / "checkpoint.pt").is_file()  # saved before the evaluation


def test_a_workload_without_with_cp_gets_no_with_cp_hint() -> None:
    from types import SimpleNamespace

    from harness.oom import memory_hint

    run = SimpleNamespace(config=SimpleNamespace(grad_accum=1, precision="fp32"),
                          workload=TinyWorkload(TinyConfig(batch_size=1)))
    assert memory_hint(run) == ("to lower memory try: --batch-size, --grad-accum 2 (same "
                                "global batch with half the --batch-size), --precision bf16 "
                                "(or fp16)")
