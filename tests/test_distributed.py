"""DDP on CPU/gloo through `harness run --nproc`: accumulation, evaluation, multi-node, signals.

Each test launches real torchrun process trees (two ranks on this machine), so they are kept
few and short (tens of seconds each on 2 shared cores).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import harness_cmd

PROBE = ["--nproc", "2", "--deterministic", "--no-checkpoint"]


@pytest.fixture(autouse=True)
def _probe_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_PLUGINS", "tests.tiny_workload,tests.ddp_probe")


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(harness_cmd("run", *args), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _probe(out: Path, rank: int) -> dict:
    return torch.load(out / f"probe.rank{rank}.pt")


def test_grad_accum_under_ddp_equals_the_larger_batch_and_all_reduces_once(tmp_path: Path) -> None:
    steps = 8
    accum, big = tmp_path / "accum", tmp_path / "big"
    _run("tiny_probe", *PROBE, "--steps", str(steps), "--batch-size", "8", "--grad-accum", "2",
         "--out", str(accum))
    _run("tiny_probe", *PROBE, "--steps", str(steps), "--batch-size", "16", "--out", str(big))
    for rank in (0, 1):
        a, b = _probe(accum, rank), _probe(big, rank)
        assert len(a["snapshots"]) == len(b["snapshots"]) == steps
        for step, (wa, wb) in enumerate(zip(a["snapshots"], b["snapshots"]), start=1):
            for name in wa:
                diff = (wa[name] - wb[name]).abs().max().item()
                assert diff <= 1e-6, f"rank {rank} step {step} {name}: |diff| {diff:.3g}"
        # no_sync on the first micro-step: one all-reduce per optimizer step, as without
        # accumulation (it would be two per step if every micro-batch synchronized).
        assert a["allreduces"] == b["allreduces"] == list(range(1, steps + 1))
    first, last = _probe(accum, 0)["snapshots"][0], _probe(accum, 0)["snapshots"][-1]
    assert (first["linear.weight"] - last["linear.weight"]).abs().max() > 1e-3  # it trained
    record = json.loads((accum / "record.json").read_text())
    assert record["status"] == "ok" and record["throughput"]["micro_steps"] == 2 * steps


def test_eval_interval_under_ddp_ends_ok(tmp_path: Path) -> None:
    # The probe model has a buffer: evaluating through the DDP wrapper on rank 0 alone would
    # broadcast it while rank 1 waits in the next step's all-reduce.
    out = tmp_path / "eval"
    _run("tiny_probe", *PROBE, "--steps", "9", "--eval-interval", "3", "--out", str(out))
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok", record["error"]
    assert [e["step"] for e in record["evals"]] == [3, 6, 9]
    assert record["metrics"]["accuracy"] > 0.8
