"""One job lifecycle for `run` and `eval` (harness/lifecycle.py): the same endings, statuses
and records whichever job it is. On the tiny workload, with the failure injected where the
job is busy (inference for eval, the final evaluation for run)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import plugins
from harness.config import RunConfig
from harness.errors import RunInterrupted
from harness.evaluation import EvalConfig, run_eval
from harness.oom import OutOfMemory
from harness.records import read_record
from harness.runner import execute

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
           "memory: you tried to allocate 1099511627776 bytes. Error code 12")


@pytest.fixture(scope="module")
def tiny() -> Iterator[None]:
    before = os.environ.get("HARNESS_PLUGINS")
    os.environ["HARNESS_PLUGINS"] = "tests.tiny_workload"
    plugins.get_plugin_manager.cache_clear()
    yield
    if before is None:
        os.environ.pop("HARNESS_PLUGINS", None)
    else:
        os.environ["HARNESS_PLUGINS"] = before
    plugins.get_plugin_manager.cache_clear()


@pytest.fixture(scope="module")
def checkpoint(tiny: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-run")
    execute(RunConfig(workload="tiny", steps=4, out=out, log_interval=2))
    return out / "checkpoint.pt"


def test_sigterm_during_eval_records_interrupted(checkpoint: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def terminated(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not turned into an interruption")

    monkeypatch.setattr("harness.evaluation.run_inference", terminated)
    with pytest.raises(RunInterrupted, match="SIGTERM"):
        run_eval(EvalConfig(workload="tiny", checkpoint=checkpoint, out=tmp_path / "e"))
    rec = read_record(tmp_path / "e")
    assert rec.kind == "eval" and rec.status == "interrupted"
    assert "SIGTERM" in (rec.error or "") and rec.duration_s is not None
    assert not (tmp_path / "e" / ".harness.lock").exists()  # the folder is released
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # and the handler put back


def test_cpu_oom_during_eval_records_oom_with_evals_own_hint(
        checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def allocator_fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr("harness.evaluation.run_inference", allocator_fails)
    with pytest.raises(OutOfMemory, match="out of memory .*inference.*--batch-size 4"):
        run_eval(EvalConfig(workload="tiny", checkpoint=checkpoint, out=tmp_path / "e",
                            batch_size=8))
    rec = read_record(tmp_path / "e")
    assert rec.status == "oom" and rec.oom is not None
    assert rec.oom["phase"] == "inference" and "--batch-size 4" in rec.oom["hint"]
    assert "--grad-accum" not in rec.oom["hint"]  # a training knob means nothing to eval
    assert "host_peak_rss_bytes" in rec.oom["memory"]


def test_oom_in_a_runs_final_evaluation_hints_the_eval_batch_size(
        tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def allocator_fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr("harness.runner.evaluate", allocator_fails)
    with pytest.raises(OutOfMemory, match="--eval-batch-size 8"):
        execute(RunConfig(workload="tiny", steps=2, out=tmp_path / "r", eval_batch_size=16))
    rec = read_record(tmp_path / "r")
    assert rec.status == "oom" and rec.oom is not None and rec.oom["phase"] == "evaluation"
    assert (rec.error or "").startswith("out of memory at step 2 (evaluation)")
    assert (tmp_path / "r" / "checkpoint.pt").is_file()  # the training is not lost


def test_run_and_eval_records_have_the_same_shape(checkpoint: Path, tmp_path: Path) -> None:
    ev = run_eval(EvalConfig(workload="tiny", checkpoint=checkpoint, out=tmp_path / "e"))
    run = read_record(checkpoint.parent)
    on_disk = read_record(tmp_path / "e")
    assert on_disk == ev  # what the job returns is what it wrote
    # Training's own sections: its starting weights and its schedule (an eval has neither).
    assert set(run.to_json()) - set(on_disk.to_json()) <= {"resumed_from", "start_weights",
                                                           "schedule"}
    assert {"checkpoint", "out_dir"} <= set(on_disk.to_json())
    for rec in (run, on_disk):
        assert rec.env["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR",
                                             "VSX", "SVE256", "NO AVX")


def test_a_refused_resume_leaves_the_live_runs_folder_alone(
        tiny: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The folder is claimed before the checkpoint is looked for: a resume refused because
    the run is still going removes none of its half-written temp files and says nothing
    about resuming."""
    import json
    import subprocess

    from harness.errors import UsageError
    from harness.outdir import LOCK_NAME

    out = tmp_path / "r"
    execute(RunConfig(workload="tiny", steps=4, out=out, checkpoint_interval=2, eval=False))
    raw = json.loads((out / "record.json").read_text())
    (out / "record.json").write_text(json.dumps({**raw, "status": "running"}))
    torn = out / "checkpoints" / ".step_6.pt.abc123.tmp"  # the live run is writing step 6
    torn.write_bytes(b"half")
    live = subprocess.Popen(["sleep", "60"])
    try:
        (out / LOCK_NAME).write_text(f"{live.pid}\n")
        capsys.readouterr()
        with pytest.raises(UsageError, match="in use by another run"):
            execute(RunConfig(workload="tiny", steps=4, out=out), resume=out)
    finally:
        live.kill()
        live.wait()
    assert torn.read_bytes() == b"half"
    assert "resuming" not in capsys.readouterr().err
    assert json.loads((out / "record.json").read_text())["status"] == "running"
