"""`--profile`: a Chrome trace of a few timed steps and a per-component table (run and eval)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.config import RunConfig
from harness.evaluation import EvalConfig, run_eval
from harness.profiling import StepProfiler
from harness.runner import execute


def _trace_names(path: Path) -> set[str]:
    trace = json.loads(path.read_text())  # valid JSON: what Perfetto / chrome://tracing load
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    return {e.get("name", "") for e in trace["traceEvents"]}


def _fractions_cover_the_step(profile: dict) -> None:
    parts = sum(r["ms"] for r in profile["components"])
    assert parts == pytest.approx(profile["step_ms"], rel=0.01)
    other = next(r for r in profile["components"] if r["component"].startswith("other"))
    assert other["ms"] <= 0.1 * profile["step_ms"], profile  # named ranges: >= 90% of a step


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU())
        self.head = torch.nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def test_model_children_get_named_ranges(tmp_path: Path) -> None:
    from backends.cpu import CPUBackend

    backend = CPUBackend()
    net = _Net()
    prof = StepProfiler(backend, tmp_path, steps=2)
    prof.start()
    while prof.active:
        with backend.trace("forward"):
            for _ in range(20):
                net(torch.randn(512, 256))
        prof.step()
    names = _trace_names(tmp_path / "profile_trace.json")
    assert {"model.backbone", "model.head", "forward"} <= names
    rows = {r["component"]: r for r in prof.result["components"]}
    assert rows["model.backbone"]["ms"] > 0 and rows["model.head"]["ms"] > 0
    assert "model.backbone.0" not in rows  # direct children only
    _fractions_cover_the_step(prof.result)


def test_run_profile_writes_trace_and_table(tmp_path: Path) -> None:
    rec = execute(RunConfig(workload="tiny", steps=8, warmup_steps=2, out=tmp_path / "r",
                            overrides=("extra_work=8",),  # steps of ~10 ms: the loop's fixed
                            # host time (loader, bookkeeping, ~0.3 ms) stays well under 10%
                            plugin_options=(("profile", True), ("profile_steps", 3))))
    on_disk = json.loads((tmp_path / "r" / "record.json").read_text())
    profile = on_disk["profile"]
    assert rec["profile"] == profile and profile["steps"] == 3
    assert [r["component"] for r in profile["components"]][:3] == ["forward", "backward",
                                                                  "optimizer"]
    assert {"forward", "backward", "optimizer"} <= _trace_names(tmp_path / "r" / profile["trace"])
    _fractions_cover_the_step(profile)


def test_eval_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.tiny_workload import TinyWorkload

    execute(RunConfig(workload="tiny", steps=4, out=tmp_path / "r"))
    slow = TinyWorkload.predict

    def predict(self: TinyWorkload, model: torch.nn.Module, batch: tuple) -> list:
        for _ in range(10):  # enough work per batch that the named ranges dominate
            torch.randn(256, 256) @ torch.randn(256, 256)
        return slow(self, model, batch)

    monkeypatch.setattr(TinyWorkload, "predict", predict)
    rec = run_eval(EvalConfig(workload="tiny", checkpoint=tmp_path / "r" / "checkpoint.pt",
                              out=tmp_path / "e", batch_size=32, profile=True, profile_steps=3))
    profile = rec["profile"]
    assert profile["steps"] == 3
    assert [r["component"] for r in profile["components"]][:2] == ["eval_data", "eval_predict"]
    assert {"eval_data", "eval_predict"} <= _trace_names(tmp_path / "e" / "profile_trace.json")
    _fractions_cover_the_step(profile)
