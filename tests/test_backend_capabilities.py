"""Backend contracts without hardware: registration, validation, probes, pure helpers.

Nothing here installs the emulated device (PrivateUse1 takes one name per process); the
emulated-device tests run in subprocesses (test_emulated_device.py).
"""
from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from harness import UsageError, plugins
from harness.api import MemoryStats


def backend(name: str) -> type:
    return plugins.get_backend(name)


def test_all_four_backends_are_registered() -> None:
    assert {"cpu", "cuda", "npu", "hpu"} <= set(plugins.backends())


@pytest.mark.parametrize("name, mode, precision, reason", [
    ("cuda", "lazy", "fp32", "lazy mode is Gaudi's"),
    ("cpu", "eager", "fp16", "no fp16"),
    ("npu", "lazy", "fp16", "lazy mode is Gaudi's"),
    ("npu", "compile", "fp16", "torchair"),
])
def test_validate_refuses_with_the_reason(name: str, mode: str, precision: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        backend(name).validate(mode, precision)


@pytest.mark.parametrize("name, mode, precision", [
    ("cuda", "eager", "fp16"), ("cuda", "compile", "bf16"), ("npu", "eager", "bf16"),
    ("hpu", "lazy", "bf16"), ("hpu", "eager", "fp32"), ("hpu", "compile", "bf16"),
])
def test_validate_accepts(name: str, mode: str, precision: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PT_HPU_LAZY_MODE", raising=False)
    backend(name).validate(mode, precision)


def test_hpu_compile_with_lazy_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "1")
    with pytest.raises(UsageError, match=r"hpu_backend.*lazy mode off"):
        backend("hpu").validate("compile", "bf16")
    backend("hpu").validate("lazy", "bf16")  # the same environment is fine for --lazy


def test_hpu_lazy_with_lazy_mode_off_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "0")
    with pytest.raises(UsageError, match="--lazy with PT_HPU_LAZY_MODE=0"):
        backend("hpu").validate("lazy", "bf16")


def test_hpu_environment_always_sets_lazy_mode() -> None:
    hpu = backend("hpu")
    assert hpu.capabilities.default_mode == "lazy"
    assert hpu.environment("lazy") == {"PT_HPU_LAZY_MODE": "1"}
    assert hpu.environment("eager") == {"PT_HPU_LAZY_MODE": "0"}
    assert hpu.environment("compile") == {"PT_HPU_LAZY_MODE": "0"}


def test_dist_backends() -> None:
    assert backend("cuda").capabilities.dist_backend == "nccl"
    assert backend("npu").capabilities.dist_backend == "hccl"
    assert backend("hpu").capabilities.dist_backend == "hccl"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_cuda_probe_says_why_not() -> None:
    probe = backend("cuda").probe()
    assert not probe.available
    assert "CUDA" in probe.reason


@pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu installed")
def test_npu_probe_names_the_missing_package() -> None:
    probe = backend("npu").probe()
    assert not probe.available
    assert probe.reason.startswith("torch_npu is not installed")
    assert "CANN" in probe.reason


@pytest.mark.skipif(importlib.util.find_spec("habana_frameworks") is not None,
                    reason="Gaudi software installed")
def test_hpu_probe_names_the_missing_package() -> None:
    probe = backend("hpu").probe()
    assert not probe.available
    assert probe.reason.startswith("habana_frameworks is not installed")


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_emulate_is_only_for_npu_and_hpu(name: str) -> None:
    with pytest.raises(UsageError, match="no emulated device"):
        backend(name).emulate()


def test_npu_fallback_capture_records_each_op_once() -> None:
    from backends.npu import _FallbackCapture

    def warn(op: str) -> None:
        warnings.warn(f"CAUTION: The operator '{op}' is not currently supported on the NPU "
                      f"backend and will fall back to run on the CPU. This may have performance "
                      f"implications.", UserWarning, stacklevel=1)

    before_show, before_filters = warnings.showwarning, list(warnings.filters)
    capture = _FallbackCapture()
    capture.install()
    try:
        for op in ("aten::isin.Tensor_Tensor_out", "torchvision::nms", "aten::isin.Tensor_Tensor_out"):
            warn(op)
        warnings.warn("unrelated", UserWarning, stacklevel=1)
    finally:
        capture.remove()
    assert capture.ops == ["aten::isin.Tensor_Tensor_out", "torchvision::nms"]
    assert warnings.showwarning is before_show
    assert warnings.filters == before_filters


def test_hpu_memory_is_normalized_from_gaudi_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    stats = {"InUse": 1_000, "MaxInUse": 5_000, "Limit": 96 * 2**30, "NumAllocs": 7}
    fake_hpu = types.SimpleNamespace(memory_stats=lambda device=None: dict(stats))
    fake_torch = types.ModuleType("habana_frameworks.torch")
    fake_torch.hpu = fake_hpu  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "habana_frameworks", types.ModuleType("habana_frameworks"))
    monkeypatch.setitem(sys.modules, "habana_frameworks.torch", fake_torch)
    mem = backend("hpu")(mode="eager").memory()
    assert isinstance(mem, MemoryStats)
    assert mem.device_peak_allocated_bytes == 5_000
    assert mem.device_peak_reserved_bytes is None  # Gaudi reports no caching-allocator pool
    assert "MaxInUse" in mem.source


def test_hpu_mark_step_only_in_lazy_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    core = types.ModuleType("habana_frameworks.torch.core")
    core.mark_step = lambda *a, **k: calls.append("mark_step")  # type: ignore[attr-defined]
    fake_torch = types.ModuleType("habana_frameworks.torch")
    fake_torch.core = core  # type: ignore[attr-defined]
    fake_torch.hpu = types.SimpleNamespace(synchronize=lambda: calls.append("sync"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "habana_frameworks", types.ModuleType("habana_frameworks"))
    monkeypatch.setitem(sys.modules, "habana_frameworks.torch", fake_torch)
    monkeypatch.setitem(sys.modules, "habana_frameworks.torch.core", core)
    hpu = backend("hpu")
    lazy = hpu(mode="lazy")
    lazy.after_backward()
    lazy.after_optimizer_step()
    lazy.synchronize()
    assert calls == ["mark_step", "mark_step", "mark_step", "sync"]
    calls.clear()
    eager = hpu(mode="eager")
    eager.after_backward()
    eager.after_optimizer_step()
    eager.synchronize()
    assert calls == ["sync"]


@pytest.mark.hardware
@pytest.mark.parametrize("name, args", [
    ("cuda", ("--precision", "fp16")),
    ("cuda", ("--precision", "bf16", "--compile")),
    ("npu", ("--precision", "fp16")),
    ("npu", ("--precision", "bf16")),
    ("hpu", ("--lazy", "--precision", "bf16")),
    ("hpu", ("--eager",)),
    ("hpu", ("--compile", "--precision", "bf16")),
])
def test_trains_on_real_hardware(tmp_path: Path, name: str, args: tuple[str, ...]) -> None:
    """Runs where the accelerator is (skips elsewhere): the same tiny workload, no emulation."""
    from tests.test_emulated_device import assert_ok, harness_run

    if not _hardware_here(name):
        pytest.skip(f"no {name} hardware here")
    proc, record, probe = harness_run(tmp_path, "emu_tiny", "--backend", name, *args,
                                      "--steps", "3", expect_device=name)
    assert_ok(proc, record)
    assert record["emulated"] is False
    assert probe["seen"]["devices"] == [f"{name}/{name}"]
    assert record["memory"]["device_peak_allocated_bytes"] > 0


@functools.lru_cache(maxsize=None)
def _hardware_here(name: str) -> bool:
    # Probe in a subprocess: importing a vendor bridge here would fix its mode for the session.
    code = f"from harness import plugins; print(plugins.get_backend({name!r}).probe().available)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    return out.stdout.strip().endswith("True")
