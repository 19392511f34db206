"""The npu/hpu backends driving real training on the CPU-emulated device (`--emulate`).

Each run is a subprocess: PrivateUse1 is registered once per process, under one name. The
test workload (tests/emulated_workload.py) asserts inside its loss that batch and weights
live on the device and that autocast really casts; a run-end hook writes what it saw plus
the emulated device's counters (mark_step calls by caller) to HARNESS_TEST_PROBE.

mark_step accounting in lazy mode: one after every backward (each micro-batch) and one after
every optimizer step, so grad_accum N gives N + 1 per optimizer step (2 without
accumulation); synchronize() at timing-window boundaries adds its own flush, counted apart.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def harness_run(tmp_path: Path, *args: str, expect_device: str = "",
                plugins: str = "tests.emulated_workload", timeout: int = 300,
                env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str],
                                                             dict[str, Any], dict[str, Any]]:
    out, probe = tmp_path / "run", tmp_path / "probe.json"
    full_env = {**os.environ, "HARNESS_PLUGINS": plugins, "HARNESS_TEST_PROBE": str(probe),
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                **(env or {})}
    if expect_device:
        full_env["HARNESS_TEST_EXPECT_DEVICE"] = expect_device
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", *args, "--out", str(out),
         "--cache-dir", str(tmp_path / "cache"), "--no-checkpoint"],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    record = json.loads((out / "record.json").read_text()) if (out / "record.json").exists() else {}
    seen = json.loads(probe.read_text()) if probe.exists() else {}
    return proc, record, seen


def assert_ok(proc: subprocess.CompletedProcess[str], record: dict[str, Any]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert record["status"] == "ok", record.get("error")


def test_npu_fp32_trains_on_the_emulated_device(tmp_path: Path) -> None:
    proc, record, probe = harness_run(tmp_path, "emu_tiny", "--backend", "npu", "--emulate",
                                      "--steps", "3", expect_device="npu")
    assert_ok(proc, record)
    assert (record["backend"], record["mode"], record["precision"]) == ("npu", "eager", "fp32")
    assert record["emulated"] is True
    assert record["memory"]["meaningful"] is False
    assert "emulated" in record["env"]["device_name"]
    assert probe["seen"]["devices"] == ["npu/npu"]
    assert probe["seen"]["autocast"] == ["off:torch.float32"]
    assert record["throughput"]["optimizer_steps"] == 3


def test_npu_bf16_autocast_really_casts(tmp_path: Path) -> None:
    proc, record, probe = harness_run(tmp_path, "emu_tiny", "--backend", "npu", "--emulate",
                                      "--precision", "bf16", "--steps", "2", expect_device="npu")
    assert_ok(proc, record)
    assert record["precision"] == "bf16"
    assert probe["seen"]["autocast"] == ["npu:torch.bfloat16"]
    casts = probe["emulation"]["autocast_casts"]
    assert casts.get("linear", 0) > 0 and casts.get("conv2d", 0) > 0


def test_npu_fp16_grad_scaler_and_cpu_fallback_report(tmp_path: Path) -> None:
    proc, record, probe = harness_run(
        tmp_path, "emu_tiny", "--backend", "npu", "--emulate", "--precision", "fp16",
        "--steps", "3", expect_device="npu",
        env={"HARNESS_EMULATED_CPU_FALLBACK_OPS": "aten::relu"})
    assert_ok(proc, record)
    assert probe["seen"]["autocast"] == ["npu:torch.float16"]
    assert record["fallback_ops"] == ["aten::relu"]
    assert "aten::_amp_foreach_non_finite_check_and_unscale_" in probe["emulation"]["ops"]


def test_hpu_fp16_uses_a_grad_scaler(tmp_path: Path) -> None:
    proc, record, probe = harness_run(tmp_path, "emu_tiny", "--backend", "hpu", "--eager",
                                      "--emulate", "--precision", "fp16", "--steps", "2",
                                      expect_device="hpu")
    assert_ok(proc, record)
    assert probe["seen"]["autocast"] == ["hpu:torch.float16"]  # the emulated card is a Gaudi2
    assert "aten::_amp_foreach_non_finite_check_and_unscale_" in probe["emulation"]["ops"]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_hpu_lazy_marks_steps_after_backward_and_optimizer(tmp_path: Path, grad_accum: int) -> None:
    steps = 3
    proc, record, probe = harness_run(
        tmp_path, "emu_tiny", "--backend", "hpu", "--lazy", "--emulate", "--precision", "bf16",
        "--steps", str(steps), "--grad-accum", str(grad_accum), expect_device="hpu")
    assert_ok(proc, record)
    assert (record["backend"], record["mode"], record["precision"]) == ("hpu", "lazy", "bf16")
    assert record["emulated"] is True
    assert probe["seen"]["autocast"] == ["hpu:torch.bfloat16"]
    by_caller = probe["emulation"]["mark_step"]["by_caller"]
    assert by_caller["after_backward"] == steps * grad_accum
    assert by_caller["after_optimizer_step"] == steps
    per_step = (by_caller["after_backward"] + by_caller["after_optimizer_step"]) / steps
    assert per_step == grad_accum + 1
    assert record["env"]["PT_HPU_LAZY_MODE"] == "1" and record["env"]["lazy_mode"] is True


@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_hpu_eager_and_compile_never_mark_steps(tmp_path: Path, mode: str) -> None:
    proc, record, probe = harness_run(tmp_path, "emu_tiny", "--backend", "hpu", f"--{mode}",
                                      "--emulate", "--steps", "2", expect_device="hpu")
    assert_ok(proc, record)
    assert record["mode"] == mode
    assert record["env"]["PT_HPU_LAZY_MODE"] == "0"
    assert probe["emulation"]["mark_step"]["total"] == 0
    assert probe["seen"]["devices"] == ["hpu/hpu"]
    if mode == "compile":  # torch.compile(backend="hpu_backend") captured the model
        assert probe.get("dynamo_unique_graphs", 0) >= 1


@pytest.mark.parametrize("stray, message", [
    ("cuda", "cuda"),  # CPU-only torch: "not compiled with CUDA"; with a GPU: device mismatch
    ("cpu", "Expected all tensors to be on the same device"),
])
def test_device_bugs_fail_clearly_on_the_emulated_device(tmp_path: Path, stray: str,
                                                         message: str) -> None:
    proc, record, _ = harness_run(tmp_path, "emu_tiny", "--backend", "npu", "--emulate",
                                  "--steps", "2", "--set", f"stray={stray}")
    assert proc.returncode == 1
    assert record["status"] == "failed"
    assert message.lower() in record["error"].lower()


def test_emulator_semantics_views_inplace_out_and_one_name_per_process() -> None:
    script = textwrap.dedent("""
        import torch
        from backends import emulation
        from harness import UsageError
        emulation.install("npu"); emulation.install("npu")
        try:
            emulation.install("hpu")
            raise SystemExit("a second device name was accepted")
        except UsageError as exc:
            assert "one name per process" in str(exc)
        x = torch.arange(12.).reshape(3, 4); d = x.to("npu")
        x[:, 1].mul_(10); d[:, 1].mul_(10)                      # in-place through a view
        assert torch.equal(d.cpu(), x)
        o = torch.empty(0, device="npu"); torch.add(d, d, out=o)  # out= with resize
        assert o.shape == (3, 4) and torch.equal(o.cpu(), x + x)
        i = torch.tensor([2, 0]); d2 = d.clone(); d2[i.to("npu")] = 7.0; x2 = x.clone(); x2[i] = 7.0
        assert torch.equal(d2.cpu(), x2) and torch.equal(d[i].cpu(), x[i])
        assert torch.equal(d[d > 20].cpu(), x[x > 20])           # data-dependent shape
        assert torch.equal(d.t().contiguous().cpu(), x.t().contiguous())
        # channels_last: composite kernels restride their outputs in place (as_strided_)
        img = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
        pooled = torch.nn.functional.adaptive_avg_pool2d(img.to("npu"), 1)
        assert torch.equal(pooled.cpu(), torch.nn.functional.adaptive_avg_pool2d(img, 1))
        w = torch.randn(4, 2, requires_grad=True); wd = w.detach().to("npu").requires_grad_()
        (x @ w).relu().sum().backward(); (d @ wd).relu().sum().backward()
        assert torch.allclose(wd.grad.cpu(), w.grad)
        with torch.autocast("npu", dtype=torch.bfloat16):
            assert torch.nn.functional.linear(d, wd.detach().t()).dtype == torch.bfloat16
        try:
            d + torch.ones(3, 4)
            raise SystemExit("a CPU tensor mixed into device math was accepted")
        except RuntimeError as exc:
            assert "same device" in str(exc)
        print("semantics ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "semantics ok" in proc.stdout, proc.stdout + proc.stderr


YOLO = ("yolov3", "--steps", "3", "--batch-size", "4", "--eval-batch-size", "4",
        "--set", "synth_train_images=32", "--set", "synth_val_images=8")


def _workload_present(name: str) -> bool:
    return (ROOT / "workloads" / name / "__init__.py").exists()


@pytest.mark.skipif(not _workload_present("yolov3"), reason="workloads/yolov3 not present")
@pytest.mark.parametrize("backend_args", [
    ("--backend", "npu", "--emulate"),
    ("--backend", "hpu", "--lazy", "--precision", "bf16", "--emulate"),
])
def test_yolov3_runs_on_the_emulated_device(tmp_path: Path, backend_args: tuple[str, ...]) -> None:
    proc, record, _ = harness_run(tmp_path, *YOLO, *backend_args,
                                  plugins="workloads.yolov3,tests.emulated_workload", timeout=600)
    assert_ok(proc, record)
    assert record["emulated"] is True and record["workload"] == "yolov3"
    assert record["throughput"]["optimizer_steps"] == 3
    assert all(v == v for row in record["losses"] for k, v in row.items() if k.startswith("loss"))


BEV = ("--steps", "2", "--warmup-steps", "0", "--batch-size", "1", "--eval-batch-size", "2",
       "--set", "synthetic_samples_per_scene=3")


@pytest.mark.skipif(not _workload_present("bevdepth"), reason="workloads/bevdepth not present")
@pytest.mark.parametrize("workload,backend_args", [
    ("bevdepth", ("--backend", "hpu", "--lazy", "--emulate")),
    ("matrixvt", ("--backend", "npu", "--emulate")),
])
def test_bevdepth_family_runs_on_the_emulated_device(tmp_path: Path, workload: str,
                                                     backend_args: tuple[str, ...]) -> None:
    # The whole path: nuScenes reader, lift-splat / matrix projection, CenterPoint targets
    # built on the device, decoding and the devkit metric, all without a CPU tensor leaking in.
    proc, record, _ = harness_run(tmp_path, workload, *BEV, *backend_args, timeout=900)
    assert_ok(proc, record)
    assert record["emulated"] is True and record["workload"] == workload
    assert record["throughput"]["optimizer_steps"] == 2
    assert {"mAP", "NDS", "mATE"} <= set(record["metrics"])
