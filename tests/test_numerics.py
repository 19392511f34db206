"""Numerical parity: the dynamo-style rule, a healthy model, and a localized injected fault.

Until the emulated npu backend exists, the "device side" is the cpu backend (fp32 or bf16);
the fault is injected there only, through the backend's prepare_model (where a real backend's
kernels would differ), so the CPU references stay clean.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from harness import Datasets, Workload, hookimpl, plugins
from harness.cli import main
from harness.errors import UsageError
from harness.numerics import format_report, multiplier, run_numerics, same

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    batch_size: int = 32
    eval_batch_size: int = 64
    steps: int = 3
    grad_clip: float | None = 5.0
    num_workers: int = 0
    hidden: int = 48


class NumericsMLP(Workload):
    """Several distinct layers, so localization has a real choice to make."""

    name = "numerics_mlp"
    Config = MLPConfig
    metrics = {"accuracy": "higher"}
    primary_metric = "accuracy"

    @classmethod
    def presets(cls) -> dict[str, MLPConfig]:
        return {"smoke": MLPConfig(), "full": MLPConfig(hidden=256)}

    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(128, 16, generator=g)
        ds = torch.utils.data.TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())
        return Datasets(ds, ds, None, "synthetic")

    def build_model(self) -> torch.nn.Module:
        h = self.config.hidden
        return torch.nn.Sequential(
            torch.nn.Linear(16, h), torch.nn.ReLU(), torch.nn.Linear(h, h),
            torch.nn.LayerNorm(h), torch.nn.GELU(), torch.nn.Linear(h, 2))

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def loss(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss_cls": torch.nn.functional.cross_entropy(model(x), y)}

    def predict(self, model: torch.nn.Module, batch: Any) -> list[Any]:
        x, y = batch
        return list(zip(model(x).argmax(1).tolist(), y.tolist(), strict=False))

    def evaluate(self, predictions: list[Any]) -> dict[str, float]:
        return {"accuracy": sum(p == t for p, t in predictions) / max(len(predictions), 1)}


class _Plugin:
    @hookimpl
    def harness_workloads(self) -> list[type[Workload]]:
        return [NumericsMLP]


@pytest.fixture(autouse=True)
def mlp_plugin() -> Iterator[None]:
    # Function scope: tests/conftest.py rebuilds the plugin manager around every test.
    pm = plugins.get_plugin_manager()
    plugin = _Plugin()
    pm.register(plugin, name="tests.test_numerics")
    yield
    pm.unregister(plugin)


def test_rule_agrees_with_torch_dynamo_same() -> None:
    """Our re-implementation gives the verdict of torch._dynamo.utils.same() itself."""
    from torch._dynamo.utils import same as dynamo_same

    g = torch.Generator().manual_seed(0)
    cases = 0
    for numel in (4, 100, 800, 4096):
        for dtype in (torch.float32, torch.bfloat16):
            for noise in (0.0, 1e-6, 1e-4, 3e-3, 3e-2):
                fp64 = torch.randn(numel, generator=g, dtype=torch.float64)
                ref = (fp64 + 1e-7 * torch.randn(numel, generator=g, dtype=torch.float64)).to(dtype)
                res = (fp64 + noise * torch.randn(numel, generator=g,
                                                  dtype=torch.float64)).to(dtype)
                for tol in (1e-3, 1e-2):
                    expected = dynamo_same(ref, res, fp64_ref=fp64, tol=tol,
                                           use_larger_multiplier_for_smaller_tensor=True,
                                           log_error=lambda *a, **k: None)
                    got = same("t", res, ref, fp64, tol).passed
                    assert got == expected, (numel, dtype, noise, tol)
                    cases += 1
    assert cases == 80


def test_multiplier_tiers() -> None:
    def m(n: int, dtype: torch.dtype = torch.float32, tol: float = 1e-3,
          amp: bool = False) -> float:
        t = torch.zeros(n, dtype=dtype)
        return multiplier(t.double(), t, tol, amp)

    assert (m(10), m(500), m(999), m(5000)) == (10.0, 8.0, 3.0, 2.0)
    assert m(5000, torch.bfloat16) == 3.0 and m(5000, amp=True) == 3.0 and m(5000, tol=2e-2) == 3.0
    conv1x1 = torch.zeros(64, 64, 1, 1)
    assert multiplier(conv1x1.double(), conv1x1, 1e-3, False) == 3.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_healthy_model_passes(precision: str, tmp_path: Path) -> None:
    report = run_numerics("numerics_mlp", "cpu", steps=3, precision=precision, cache_dir=tmp_path)
    assert report.passed, format_report(report)
    assert len(report.steps) == 3 and len(report.steps[0].grad_checks) == 8
    assert report.culprit is None


@pytest.fixture
def faulty_layer(monkeypatch: pytest.MonkeyPatch) -> str:
    """Relative noise (1%) on the output of Sequential index 2 (a Linear), device side only."""
    import backends.cpu as cpu

    original = cpu.CPUBackend.prepare_model

    def prepare_model(self: Any, model: torch.nn.Module) -> torch.nn.Module:
        def noisy(mod: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
            return out + 1e-2 * out.detach().std() * torch.randn_like(out)

        model[2].register_forward_hook(noisy)
        return original(self, model)

    monkeypatch.setattr(cpu.CPUBackend, "prepare_model", prepare_model)
    return "2 (Linear)"


def test_injected_fault_is_localized(faulty_layer: str, tmp_path: Path) -> None:
    report = run_numerics("numerics_mlp", "cpu", steps=2, cache_dir=tmp_path)
    text = format_report(report)
    assert not report.passed, text
    assert report.culprit == faulty_layer, text
    assert f"first module breaking the bound: {faulty_layer}" in text


def test_cli_numerics(faulty_layer: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parity", "--numerics", "numerics_mlp", "--backend", "cpu", "--steps", "1"]) == 1
    assert "first module breaking the bound: 2 (Linear)" in capsys.readouterr().out
    assert main(["parity", "--numerics", "numerics_mlp", "somerecord.json"]) == 2


EMULATED_SCRIPT = """
import torch
from harness import plugins
import tests.test_numerics as tn
plugins.get_plugin_manager().register(tn._Plugin(), name="tests.test_numerics")
from harness.numerics import format_report, run_numerics
for precision in ("fp32", "bf16"):
    print(format_report(run_numerics("numerics_mlp", "npu", steps=2, emulate=True,
                                     precision=precision)))
import backends.npu as npu
original = npu.NPUBackend.prepare_model
def prepare_model(self, model):
    model[3].register_forward_hook(
        lambda m, a, out: out + 1e-2 * out.detach().std() * torch.randn_like(out))
    return original(self, model)
npu.NPUBackend.prepare_model = prepare_model
print(format_report(run_numerics("numerics_mlp", "npu", steps=1, emulate=True)))
"""


def test_emulated_npu(tmp_path: Path) -> None:
    """Healthy fp32/bf16 pass and a fault in LayerNorm "3" is named, on the emulated npu.

    A subprocess: the emulated device must be registered before the process's first backward
    (the autograd engine sizes its device queues once), and once per process.
    """
    try:
        plugins.get_backend("npu")
    except UsageError:
        pytest.skip("npu backend not registered")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HARNESS_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", EMULATED_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "numerics_mlp on npu (device npu:0), fp32" in out
    assert out.count("result: PASS") == 2, out
    assert "first module breaking the bound: 3 (LayerNorm)" in out, out
