"""`harness run --resume` of DeepSpeed runs (CPU, bf16, gloo): the engine's own
save_checkpoint/load_checkpoint for model, fp32 master weights and optimizer, the harness's
file for RNG, data position, scheduler, workload state and record. A run stopped by SIGTERM at
a step that is not a checkpoint step, then resumed, logs the uninterrupted run's losses and
ends with its bf16 weights and fp32 master weights bit for bit.

The engine's files are read weights_only too: a tampered one is refused (and the resume
falls back to the previous checkpoint), never unpickled with code.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.safe_load import safe_torch_load
from tests.conftest import harness_cmd
from tests.test_deepspeed import needs_deepspeed
from tests.test_resume import _loss_rows

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="DeepSpeed JIT-builds its CPU comm op and no C++ compiler is here")


def _harness(*args: str, env: dict[str, str], check: int | None = 0
             ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(harness_cmd("run", *args), env=env, capture_output=True, text=True,
                          timeout=900)
    if check is not None:
        assert proc.returncode == check, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


# single: one process (test_resume's SIGTERM-to-self hook); nproc2: torchrun with two ranks
# (test_resume_ddp's hook signals the launching parent), the gather of per-rank shares.
@needs_deepspeed
@needs_compiler
@pytest.mark.parametrize("layout", ["single", pytest.param("nproc2", marks=pytest.mark.slow)])
def test_deepspeed_sigterm_then_resume_is_exact(tmp_path: Path, layout: str) -> None:
    if layout == "single":
        plugin, workload, kill, launch = "tests.test_resume", "tiny_noisy", \
            "RESUME_TEST_SIGTERM_AT", []
    else:
        plugin, workload, kill, launch = "tests.test_resume_ddp", "tiny_noisy_ranked", \
            "RESUME_DDP_TEST_SIGTERM_AT", ["--nproc", "2"]
    env = {**os.environ, "HARNESS_PLUGINS": f"tests.tiny_workload,{plugin}",
           "OMP_NUM_THREADS": "1"}
    args = [workload, *launch, "--deepspeed", "--precision", "bf16", "--deterministic",
            "--steps", "30", "--checkpoint-interval", "10", "--keep-checkpoints", "1",
            "--log-interval", "3", "--warmup-steps", "2"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _harness(*args, "--out", str(whole), env=env)
    _harness(*args, "--out", str(cut), env={**env, kill: "25"}, check=None)
    assert json.loads((cut / "record.json").read_text())["status"] == "interrupted"
    engine_tags = cut / "checkpoints" / "deepspeed"
    # SIGTERM after step 25: the step after it finishes and checkpoints (step 26);
    # --keep-checkpoints 1: step_20's engine folder went with its step file
    assert [p.name for p in engine_tags.iterdir() if p.is_dir()] == ["step_26"]
    assert [p.name for p in (cut / "checkpoints").glob("step_*.pt")] == ["step_26.pt"]
    ckpt = safe_torch_load(cut / "checkpoints" / "step_26.pt")
    assert ckpt["engine"] == {"dir": "deepspeed", "tag": "step_26"} and "model" not in ckpt

    if layout == "single":  # a tampered engine file: refused, with the reason, never run
        from harness.checkpoint_dist import engine_problem

        tampered = tmp_path / "tampered"
        shutil.copytree(cut, tampered)
        marker = tmp_path / "code-ran"
        target = next((tampered / "checkpoints" / "deepspeed" / "step_26").glob("*.pt"))
        torch.save({"module": _RunsCode(marker)}, target)
        why = engine_problem(tampered, ckpt)
        assert why is not None and "refused" in why and "posix.system" in why
        assert not marker.exists()

    _harness("--resume", str(cut), *launch, env=env)
    names = ["record.json"] + (["record.rank1.json"] if launch else [])
    for name in names:
        got, want = (json.loads((d / name).read_text()) for d in (cut, whole))
        assert got["status"] == "ok", got["error"]
        assert [r["step"] for r in got["resumed_from"]] == [26]
        assert _loss_rows(got) == _loss_rows(want)
    resumed = json.loads((cut / "record.json").read_text())
    assert resumed["throughput"]["optimizer_steps"] == 30  # the engine's own count, restored
    assert resumed["throughput"]["timed_steps"] == 30 - 2 - 2
    got_ck, want_ck = safe_torch_load(cut / "checkpoint.pt"), safe_torch_load(whole / "checkpoint.pt")
    for name, tensor in want_ck["model"].items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(got_ck["model"][name], tensor)
    masters = [(a, b) for ga, gb in zip(got_ck["optimizer"]["fp32_groups"],
                                        want_ck["optimizer"]["fp32_groups"])
               for a, b in zip(ga, gb)]
    assert masters and all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in masters)


@needs_deepspeed
@needs_compiler
@pytest.mark.slow
def test_deepspeed_first_ctrl_c_finishes_the_step_with_a_checkpoint(tmp_path: Path) -> None:
    """One process under DeepSpeed: the first SIGINT finishes step 7, the engine and the
    harness write step_7, and the resumed run is the uninterrupted one."""
    env = {**os.environ, "HARNESS_PLUGINS": "tests.tiny_workload,tests.test_resume",
           "OMP_NUM_THREADS": "1"}
    args = ["tiny_noisy", "--deepspeed", "--precision", "bf16", "--deterministic", "--steps",
            "12", "--log-interval", "1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _harness(*args, "--out", str(whole), env=env)
    _harness(*args, "--out", str(cut), env={**env, "RESUME_TEST_SIGINT_AT": "7"}, check=None)
    record = json.loads((cut / "record.json").read_text())
    assert record["status"] == "interrupted" and "stopped after step 7" in record["error"]
    assert (cut / "checkpoints" / "deepspeed" / "step_7").is_dir()
    _harness("--resume", str(cut), env=env)
    got, want = (json.loads((d / "record.json").read_text()) for d in (cut, whole))
    assert got["status"] == "ok" and _loss_rows(got) == _loss_rows(want)
