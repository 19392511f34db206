"""Issue 9 item 10: one path to a prepared run, used by run, the benchmark step and numerics;
and the module structure it brought (no import cycles, a leaf emulator state module)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backends.cpu import CPUBackend
from harness.config import RunConfig
from harness.errors import UsageError
from harness.prepare import prepare_run
from harness.strategies import Strategy

ROOT = Path(__file__).resolve().parents[1]


def test_eval_only_preparation_gives_device_data_and_an_ordered_val_loader() -> None:
    prepared = prepare_run(RunConfig(workload="tiny", eval_batch_size=32), strategy=Strategy())
    try:
        assert prepared.device is not None and prepared.device.type == "cpu"
        assert prepared.workload.user_set == {"eval_batch_size"}
        loader = prepared.loader("val")
        assert loader.batch_size == 32 and len(loader) == 8  # 256 samples, every one, in order
        first = next(iter(loader))[1]
        assert first.tolist() == prepared.data.val.tensors[1][:32].tolist()
    finally:
        prepared.close()


@pytest.fixture
def refusing_precision(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    closed: list[str] = []

    def check_precision(self: CPUBackend, precision: str) -> None:
        raise UsageError(f"backend cpu: no {precision} here (test)")

    monkeypatch.setattr(CPUBackend, "check_precision", check_precision)
    monkeypatch.setattr(CPUBackend, "close", lambda self: closed.append("closed"))
    return closed


def test_benchmark_step_checks_precision_like_the_runner(refusing_precision: list[str]) -> None:
    from harness.benchmark import prepare_training_step

    with pytest.raises(UsageError, match="no bf16 here"):
        prepare_training_step("tiny", "cpu", "bf16")
    assert refusing_precision == ["closed"]  # what the first stage opened is released


def test_numerics_checks_precision_like_the_runner(refusing_precision: list[str]) -> None:
    from harness.numerics import run_numerics

    with pytest.raises(UsageError, match="no bf16 here"):
        run_numerics("tiny", "cpu", steps=1, precision="bf16")


def test_benchmark_and_numerics_use_the_workloads_own_sampler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import plugins
    from harness.benchmark import prepare_training_step
    from tests.contract_workload import ContractWorkload

    monkeypatch.setenv("HARNESS_PLUGINS", "tests.tiny_workload,tests.contract_workload")
    plugins.get_plugin_manager.cache_clear()
    used: list[int] = []
    real = ContractWorkload.train_batch_sampler

    def spy(self: ContractWorkload, *args: object) -> object:
        used.append(1)
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ContractWorkload, "train_batch_sampler", spy)
    prepared = prepare_training_step("tiny-contracts", "cpu", batches=2)
    prepared.close()
    assert used == [1]


def test_no_import_cycles_and_a_leaf_emulator_state() -> None:
    code = ("import sys, harness.hookspecs, harness.training, harness.console\n"
            "assert 'harness.runner' not in sys.modules, 'training/hookspecs import the runner'\n"
            "import backends.emulated_vendor\n"
            "assert 'backends.emulation' not in sys.modules, 'vendor stand-ins import emulation'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_deepspeed_accelerator_is_a_backend_capability() -> None:
    from harness import plugins

    names = {n: c.capabilities.deepspeed_accelerator for n, c in plugins.backends().items()}
    assert {k: names[k] for k in ("cpu", "cuda", "npu", "hpu")} == {
        "cpu": "cpu", "cuda": "cuda", "npu": "npu", "hpu": "hpu"}


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed")
def test_deepspeed_refuses_a_backend_naming_no_accelerator() -> None:
    import dataclasses

    from harness.deepspeed_strategy import DeepSpeedStrategy

    class NoDeepSpeed(CPUBackend):
        name = "nods"
        capabilities = dataclasses.replace(CPUBackend.capabilities, deepspeed_accelerator=None)

    with pytest.raises(UsageError, match="backend nods names no DeepSpeed accelerator"):
        DeepSpeedStrategy("").setup(NoDeepSpeed(), RunConfig(workload="tiny"))
