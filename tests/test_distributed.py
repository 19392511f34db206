"""DDP on CPU/gloo through `harness run --nproc`: accumulation, evaluation, multi-node, signals.

Each test launches real torchrun process trees (two ranks on this machine), so they are kept
few and short (tens of seconds each on 2 shared cores).
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("node_rank", [
    pytest.param(False, id="c10d"), pytest.param(True, id="static", marks=pytest.mark.slow)])
def test_two_nodes_on_one_machine_write_one_record_counting_both(tmp_path: Path,
                                                                  node_rank: bool) -> None:
    out, endpoint = tmp_path / "shared", f"127.0.0.1:{_free_port()}"
    nodes = []
    for rank in (0, 1):
        extra = ["--node-rank", str(rank)] if node_rank else ["--rdzv-id", "two-nodes-test"]
        nodes.append(subprocess.Popen(
            harness_cmd("run", "tiny", "--nnodes", "2", "--nproc", "1", "--rdzv-endpoint",
                        endpoint, *extra, "--steps", "10", "--out", str(out)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert sorted(f.name for f in out.glob("record*.json")) == ["record.json", "record.rank1.json"]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["strategy"] == "ddp" and record["world_size"] == 2
    tp = record["throughput"]
    per_rank = tp["timed_steps"] * record["config"]["workload"]["batch_size"]
    assert tp["samples_per_s"] == pytest.approx(2 * per_rank / tp["window_s"], rel=1e-6)


def _processes_mentioning(marker: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("sig", [
    pytest.param(signal.SIGTERM, id="SIGTERM"),
    pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow)])
def test_signal_to_the_nproc_parent_ends_the_whole_tree_with_interrupted_records(
        tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "signalled"
    # Started as a background job of a shell would be, with SIGINT ignored: the parent's own
    # handler must still catch it, and the launcher and workers must not inherit the ignore.
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) \
        if sig == signal.SIGINT else None
    parent = subprocess.Popen(
        harness_cmd("run", "tiny", "--nproc", "2", "--steps", "1000000", "--log-interval", "20",
                    "--out", str(out)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ignore_sigint)
    assert parent.stdout is not None
    logged = 0
    for line in parent.stdout:
        logged += line.startswith("Epoch")
        if logged == 2:
            break
    assert logged == 2, "the run never got going"
    assert len(_processes_mentioning(str(out))) >= 4  # parent, launcher, two workers
    parent.send_signal(sig)  # only the parent, as a CI runner cancelling the job does
    parent.communicate(timeout=120)
    assert parent.returncode != 0
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(out)) == [], "processes of the run outlived its parent"
    for name in ("record.json", "record.rank1.json"):
        record = json.loads((out / name).read_text())
        assert record["status"] == "interrupted", (name, record["error"])


def test_launcher_command_for_each_topology(tmp_path: Path) -> None:
    import argparse

    from harness.errors import UsageError
    from harness.launch import add_launch_arguments, strip_launch_options, torchrun_command

    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    add_launch_arguments(parser)

    def cmd(*argv: str) -> list[str]:
        return torchrun_command(parser.parse_args(argv), ["run", "tiny"])

    single = cmd("--nproc", "4")
    assert "--standalone" in single and "--nproc-per-node=4" in single
    c10d = cmd("--nnodes", "2", "--rdzv-endpoint", "node0:29400", "--rdzv-id", "42", "--out", "o")
    assert "--standalone" not in c10d
    assert {"--nnodes=2", "--rdzv-endpoint=node0:29400", "--rdzv-backend=c10d",
            "--rdzv-id=42"} <= set(c10d)
    static = cmd("--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "node0:29500",
                 "--out", "o")
    assert {"--rdzv-backend=static", "--node-rank=1"} <= set(static)
    assert single[-3:] == ["harness.cli", "run", "tiny"]
    for bad in (["--nnodes", "2", "--out", "o"],  # no endpoint
                ["--nnodes", "2", "--rdzv-endpoint", "node0", "--out", "o"],  # no port
                ["--nnodes", "2", "--rdzv-endpoint", "node0:1"],  # no shared --out
                ["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "n:1", "--out", "o"]):
        with pytest.raises(UsageError):
            cmd(*bad)
    assert strip_launch_options(["run", "tiny", "--nproc", "2", "--nnodes=2", "--rdzv-endpoint",
                                 "h:1", "--rdzv-id", "x", "--node-rank", "0", "--steps", "3"]
                                ) == ["run", "tiny", "--steps", "3"]


def test_nproc_parent_names_one_run_folder_for_all_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --out every worker would stamp its own runs/<...>-<time> folder."""
    from harness import cli, launch

    launched: list[list[str]] = []
    monkeypatch.setattr(launch, "run_process_tree", lambda cmd: launched.append(cmd) or 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert cli.main(["run", "tiny", "--nproc", "2", "--steps", "3"]) == 0
    cmd = launched[0]
    worker = cmd[cmd.index("harness.cli") + 1:]
    assert worker[:4] == ["run", "tiny", "--steps", "3"] and "--nproc" not in worker
    out = worker[worker.index("--out") + 1]
    assert Path(out).parent == Path("runs") and Path(out).name.startswith("tiny-cpu-fp32-")
