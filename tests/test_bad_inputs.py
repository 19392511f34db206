"""The bad-input matrix (issue 15): each case is a mistake or fault a careful user can make.

Every case asserts the exit code, that stderr is exactly one line without a traceback, and
what is on disk afterwards (no torn, lost or silently replaced record). Cases run in-process
through `harness.cli.main` on the tiny test workload, so the matrix takes seconds.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.cli import main
from harness.outdir import LOCK_NAME, default_run_folder

OK, FAILED, USAGE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # "{out}" is the case's --out folder, "{tmp}" its temp dir
    code: int
    says: str  # a piece of the one stderr line ("" for a successful run: no stderr at all)
    setup: Callable[[Path], None] | None = None
    after: Callable[[Path], None] | None = None  # asserts on the out folder
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # "{tmp}" expanded


def _nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def _previous_run(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "record.json").write_text('{"schema": "perception-harness/run-record/1", '
                                      '"status": "ok", "marker": "previous"}\n')
    (out / "log.jsonl").write_text('{"marker": "previous"}\n')
    (out / "checkpoint.pt").write_bytes(b"previous")


def _previous_run_untouched(out: Path) -> None:
    assert json.loads((out / "record.json").read_text())["marker"] == "previous"
    assert (out / "log.jsonl").read_text() == '{"marker": "previous"}\n'
    assert (out / "checkpoint.pt").read_bytes() == b"previous"
    assert not (out / LOCK_NAME).exists()


def _replaced_cleanly(out: Path) -> None:
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and "marker" not in record
    assert "previous" not in (out / "log.jsonl").read_text()
    assert (out / "checkpoint.pt").read_bytes() != b"previous"
    assert not (out / LOCK_NAME).exists()


def _held_by_live_run(out: Path) -> None:
    out.mkdir(parents=True)
    (out / LOCK_NAME).write_text(f"{os.getppid()}\n")  # our parent: alive, not us


def _lock_still_held(out: Path) -> None:
    assert (out / LOCK_NAME).read_text().strip() == str(os.getppid())
    assert not (out / "record.json").exists()


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def _stale_lock(out: Path) -> None:
    out.mkdir(parents=True)
    (out / LOCK_NAME).write_text(f"{_dead_pid()}\n")


def _ok_run(out: Path) -> None:
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok"
    assert not (out / LOCK_NAME).exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def _record_status(status: str) -> Callable[[Path], None]:
    def check(out: Path) -> None:
        record = json.loads((out / "record.json").read_text())
        assert record["status"] == status
        assert not (out / LOCK_NAME).exists()
    return check


def _a_file(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("not a folder")


def _still_a_file(out: Path) -> None:
    assert out.read_text() == "not a folder"


def _checkpoint(out: Path) -> None:
    """A tiny run's checkpoint.pt at {tmp}/ckpt.pt (as save_checkpoint writes it)."""
    import torch

    from harness.config import config_to_dict
    from tests.tiny_workload import TinyConfig

    torch.save({"model": torch.nn.Linear(8, 3).state_dict(), "step": 2, "workload": "tiny",
                "workload_config": config_to_dict(TinyConfig())}, out.parent / "ckpt.pt")


def _garbage_checkpoint(out: Path) -> None:
    (out.parent / "ckpt.pt").write_bytes(b"not a checkpoint")


class _Crafted:
    """Unpickles into a call (print here; a real attack would call something worse)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this ran while loading",))


def _crafted_pickle(out: Path) -> None:
    """A bare pickle (protocol 4, which torch warns about) that runs code when loaded."""
    import pickle

    (out.parent / "ckpt.pt").write_bytes(pickle.dumps({"model": _Crafted()}, protocol=4))


def _no_eval_run(out: Path) -> None:
    """The record a `--no-eval` run leaves (no metrics, no predictions file)."""
    out.mkdir(parents=True)
    (out / "record.json").write_text(json.dumps({
        "schema": "perception-harness/run-record/2", "kind": "train", "workload": "tiny",
        "scale": "smoke", "backend": "cpu", "mode": "eager", "precision": "fp32",
        "status": "ok", "config": {"run": {"eval": False, "out": str(out)}, "workload": {}}}))


def _checkpoint_and_previous_run(out: Path) -> None:
    _checkpoint(out)
    _previous_run(out)


def _previous_eval(out: Path) -> None:
    _checkpoint(out)
    out.mkdir(parents=True)
    (out / "record.json").write_text('{"kind": "eval", "status": "ok", "marker": "previous"}')


def _previous_eval_untouched(out: Path) -> None:
    assert json.loads((out / "record.json").read_text())["marker"] == "previous"
    assert sorted(p.name for p in out.iterdir()) == ["record.json"]


def _eval_replaced_cleanly(out: Path) -> None:
    record = json.loads((out / "record.json").read_text())
    assert record["kind"] == "eval" and record["status"] == "ok" and "marker" not in record
    assert not (out / LOCK_NAME).exists()


RUN = ("run", "tiny", "--out", "{out}")
EVAL = ("eval", "tiny", "--checkpoint", "{tmp}/ckpt.pt", "--out", "{out}")
EXPORT = ("export", "tiny", "--checkpoint", "{tmp}/ckpt.pt")
NUMERICS = ("parity", "--numerics", "tiny", "--backend", "cpu")
MATRIX: list[Case] = [
    # numeric options, refused before anything is touched
    Case("steps-0", (*RUN, "--steps", "0"), USAGE, "--steps 0: must be >= 1", after=_nothing_written),
    Case("steps-negative", (*RUN, "--steps", "-1"), USAGE, "--steps -1", after=_nothing_written),
    Case("steps-not-a-number", (*RUN, "--steps", "abc"), USAGE, "invalid int value",
         after=_nothing_written),
    Case("epochs-0", (*RUN, "--epochs", "0"), USAGE, "--epochs 0", after=_nothing_written),
    Case("epochs-negative", (*RUN, "--epochs", "-2.5"), USAGE, "must be > 0", after=_nothing_written),
    Case("epochs-nan", (*RUN, "--epochs", "nan"), USAGE, "--epochs nan", after=_nothing_written),
    Case("steps-and-epochs", (*RUN, "--steps", "2", "--epochs", "1"), USAGE, "not allowed with",
         after=_nothing_written),
    Case("batch-size-0", (*RUN, "--batch-size", "0"), USAGE, "--batch-size 0", after=_nothing_written),
    Case("batch-size-negative", (*RUN, "--batch-size", "-4"), USAGE, "--batch-size -4",
         after=_nothing_written),
    Case("eval-batch-size-0", (*RUN, "--eval-batch-size", "0"), USAGE, "--eval-batch-size 0",
         after=_nothing_written),
    Case("workers-negative", (*RUN, "--workers", "-1"), USAGE, "--workers -1: must be >= 0",
         after=_nothing_written),
    Case("nproc-0", (*RUN, "--nproc", "0"), USAGE, "--nproc 0", after=_nothing_written),
    Case("nproc-negative", (*RUN, "--nproc", "-3"), USAGE, "--nproc -3", after=_nothing_written),
    Case("nnodes-0", (*RUN, "--nnodes", "0"), USAGE, "--nnodes 0", after=_nothing_written),
    Case("grad-accum-0", (*RUN, "--grad-accum", "0"), USAGE, "--grad-accum 0",
         after=_nothing_written),
    Case("log-interval-0", (*RUN, "--log-interval", "0"), USAGE, "--log-interval 0",
         after=_nothing_written),
    Case("eval-interval-negative", (*RUN, "--eval-interval", "-1"), USAGE, "--eval-interval -1",
         after=_nothing_written),
    Case("warmup-steps-negative", (*RUN, "--warmup-steps", "-5"), USAGE, "--warmup-steps -5",
         after=_nothing_written),
    Case("checkpoint-interval-negative", (*RUN, "--checkpoint-interval", "-1"), USAGE,
         "--checkpoint-interval -1", after=_nothing_written),
    Case("keep-checkpoints-0", (*RUN, "--keep-checkpoints", "0"), USAGE, "--keep-checkpoints 0",
         after=_nothing_written),
    Case("seed-negative", (*RUN, "--seed", "-1"), USAGE, "--seed -1: must be in 0..4294967295",
         after=_nothing_written),
    Case("seed-too-large", (*RUN, "--seed", str(2**32)), USAGE, "--seed 4294967296",
         after=_nothing_written),
    # names and options
    Case("unknown-workload", ("run", "nosuch", "--out", "{out}"), USAGE, "valid:",
         after=_nothing_written),
    Case("no-workload", ("run", "--out", "{out}"), USAGE, "a WORKLOAD is needed",
         after=_nothing_written),
    Case("unknown-backend", (*RUN, "--backend", "nosuch"), USAGE, "valid: cpu",
         after=_nothing_written),
    Case("unknown-scale", (*RUN, "--scale", "huge"), USAGE, "no scale 'huge'",
         after=_nothing_written),
    Case("unknown-set-field", (*RUN, "--set", "nosuch=1"), USAGE, "nosuch", after=_nothing_written),
    Case("set-bad-value", (*RUN, "--set", "lr=abc"), USAGE, "--set lr=abc", after=_nothing_written),
    Case("unknown-flag", (*RUN, "--bogus-flag"), USAGE, "--bogus-flag", after=_nothing_written),
    Case("lazy-on-cpu", (*RUN, "--lazy"), USAGE, "lazy", after=_nothing_written),
    Case("fp16-on-cpu", (*RUN, "--precision", "fp16"), USAGE, "fp16", after=_nothing_written),
    Case("bad-precision", (*RUN, "--precision", "fp8"), USAGE, "invalid choice",
         after=_nothing_written),
    Case("unknown-verb", ("nosuch",), USAGE, "invalid choice"),
    Case("overwrite-with-resume", (*RUN, "--overwrite", "--resume", "{out}"), USAGE,
         "--overwrite with --resume", setup=_previous_run, after=_previous_run_untouched),
    Case("resume-not-a-run", ("run", "--resume", "{out}"), USAGE, "no record.json",
         after=_nothing_written),
    # output folders
    Case("out-is-a-file", (*RUN, "--steps", "1"), USAGE, "is a file, not a folder",
         setup=_a_file, after=_still_a_file),
    Case("out-under-a-file", ("run", "tiny", "--steps", "1", "--out", "{tmp}/file/run"), USAGE,
         "Not a directory", setup=lambda out: (out.parent / "file").write_text("x")),
    Case("out-holds-a-run", (*RUN, "--steps", "1"), USAGE, "already holds a run",
         setup=_previous_run, after=_previous_run_untouched),
    Case("out-in-use", (*RUN, "--steps", "1"), USAGE, "in use by another run",
         setup=_held_by_live_run, after=_lock_still_held),
    Case("out-stale-lock-is-taken", (*RUN, "--steps", "2", "--no-eval"), OK, "",
         setup=_stale_lock, after=_ok_run),
    Case("overwrite-replaces-cleanly", (*RUN, "--steps", "2", "--overwrite"), OK, "",
         setup=_previous_run, after=_replaced_cleanly),
    # inputs of the other verbs
    Case("check-no-record", ("check", "{out}"), USAGE, "no run record"),
    Case("check-torn-record", ("check", "{out}"), USAGE, "not valid JSON",
         setup=lambda out: (out.mkdir(), (out / "record.json").write_text('{"schema": '))),
    Case("show-a-no-eval-run", ("show", "{out}"), USAGE,
         "the run has no evaluation (--no-eval); score its weights with `harness eval tiny "
         "--checkpoint {out}/checkpoint.pt`: nothing to show", setup=_no_eval_run),
    Case("eval-no-checkpoint", ("eval", "tiny", "--checkpoint", "{out}/none.pt"), USAGE,
         "no checkpoint"),
    # harness eval / export: checkpoints, options and folders
    Case("eval-checkpoint-is-a-folder", ("eval", "tiny", "--checkpoint", "{tmp}"), USAGE,
         "no checkpoint at"),
    Case("eval-checkpoint-not-a-checkpoint", EVAL, USAGE,
         "ckpt.pt: not a torch checkpoint (neither torch.save's zip archive nor a pickle",
         setup=_garbage_checkpoint, after=_nothing_written),
    Case("eval-checkpoint-of-random-bytes", EVAL, USAGE, "ckpt.pt: not a torch checkpoint",
         setup=lambda out: (out.parent / "ckpt.pt").write_bytes(bytes(range(1, 256)) * 8),
         after=_nothing_written),
    Case("eval-checkpoint-a-crafted-pickle", EVAL, USAGE, "refused: loading it needs more",
         setup=_crafted_pickle, after=_nothing_written),
    Case("eval-checkpoint-of-another-workload", ("eval", "yolov3", *EVAL[2:]), USAGE,
         "holds a 'tiny' model, not 'yolov3'", setup=_checkpoint, after=_nothing_written),
    Case("eval-checkpoint-of-another-config", (*EVAL, "--scale", "full"), USAGE,
         "mismatching keys: features: checkpoint 8, here 32", setup=_checkpoint,
         after=_nothing_written),
    Case("eval-weights-do-not-fit", (*EVAL, "--set", "features=4"), USAGE,
         "weights do not fit the model", setup=_checkpoint),
    Case("eval-unknown-scale", (*EVAL, "--scale", "huge"), USAGE, "no scale 'huge'",
         setup=_checkpoint, after=_nothing_written),
    Case("eval-config-nan", (*EVAL, "--set", "lr=nan"), USAGE, "config lr=nan: must be finite",
         setup=_checkpoint, after=_nothing_written),
    Case("eval-batch-size-0", (*EVAL, "--batch-size", "0"), USAGE, "--batch-size 0: must be >= 1",
         setup=_checkpoint, after=_nothing_written),
    Case("eval-warmup-negative", (*EVAL, "--warmup-batches", "-1"), USAGE,
         "--warmup-batches -1: must be >= 0", setup=_checkpoint, after=_nothing_written),
    Case("eval-workers-negative", (*EVAL, "--workers", "-1"), USAGE, "--workers -1: must be >= 0",
         setup=_checkpoint, after=_nothing_written),
    Case("eval-seed-negative", (*EVAL, "--seed", "-1"), USAGE, "--seed -1: must be in 0..",
         setup=_checkpoint, after=_nothing_written),
    Case("eval-profile-steps-0", (*EVAL, "--profile", "--profile-steps", "0"), USAGE,
         "--profile-steps 0: must be >= 1", setup=_checkpoint, after=_nothing_written),
    Case("eval-agreement-batches-negative", (*EVAL, "--agreement-batches", "-1"), USAGE,
         "--agreement-batches -1", setup=_checkpoint, after=_nothing_written),
    Case("eval-opset-0", (*EVAL, "--opset", "0"), USAGE, "--opset 0: must be >= 1",
         setup=_checkpoint, after=_nothing_written),
    Case("eval-out-holds-a-training-run", EVAL, USAGE, "holds a run's record",
         setup=_checkpoint_and_previous_run, after=_previous_run_untouched),
    Case("eval-out-holds-an-evaluation", EVAL, USAGE, "already holds an evaluation",
         setup=_previous_eval, after=_previous_eval_untouched),
    Case("eval-overwrite-replaces-an-evaluation", (*EVAL, "--overwrite"), OK, "",
         setup=_previous_eval, after=_eval_replaced_cleanly),
    Case("eval-onnx-graph-missing", (*EVAL, "--backend", "onnxruntime", "--onnx",
                                     "{tmp}/none.onnx"), USAGE, "no ONNX graph at",
         setup=_checkpoint, after=_record_status("failed")),
    Case("export-no-checkpoint", ("export", "tiny", "--checkpoint", "{tmp}/none.pt"), USAGE,
         "no checkpoint at"),
    Case("export-not-a-checkpoint", EXPORT, USAGE, "not a torch checkpoint",
         setup=_garbage_checkpoint),
    Case("export-checkpoint-of-another-workload", ("export", "yolov3", *EXPORT[2:]), USAGE,
         "holds a 'tiny' model", setup=_checkpoint),
    Case("export-unknown-format", (*EXPORT, "--format", "tflite"), USAGE,
         "unknown export format 'tflite'", setup=_checkpoint),
    Case("export-opset-0", (*EXPORT, "--opset", "0", "--out", "{out}.onnx"), USAGE,
         "--opset 0: must be >= 1", setup=_checkpoint),
    Case("export-out-is-a-folder", (*EXPORT, "--out", "{tmp}"), USAGE,
         "is a folder: give the file to write", setup=_checkpoint),
    # the cache folder (issue 24): refused before the run folder is claimed
    Case("cache-dir-is-a-file", (*RUN, "--cache-dir", "{tmp}/file"), USAGE,
         "cache folder {tmp}/file (--cache-dir) is a file, not a folder",
         setup=lambda out: (out.parent / "file").write_text("x"), after=_nothing_written),
    Case("cache-dir-under-a-file", (*RUN, "--cache-dir", "{tmp}/file/cache"), USAGE,
         "lies under {tmp}/file, which is a file",
         setup=lambda out: (out.parent / "file").write_text("x"), after=_nothing_written),
    Case("harness-cache-is-a-file", RUN, USAGE, "($HARNESS_CACHE) is a file, not a folder",
         setup=lambda out: (out.parent / "file").write_text("x"), after=_nothing_written,
         env={"HARNESS_CACHE": "{tmp}/file"}),
    # parity --numerics: its own numeric options, before a workload is built (issue 24)
    Case("numerics-steps-0", (*NUMERICS, "--steps", "0"), USAGE, "--steps 0: must be >= 1"),
    Case("numerics-steps-negative", (*NUMERICS, "--steps", "-1"), USAGE, "--steps -1"),
    Case("numerics-tol-nan", (*NUMERICS, "--tol", "nan"), USAGE,
         "--tol nan: must be a finite number"),
    Case("numerics-tol-negative", (*NUMERICS, "--tol", "-1"), USAGE, "--tol -1.0: must be >= 0"),
    Case("numerics-seed-20-digits", (*NUMERICS, "--seed", "1" * 20), USAGE,
         "--seed 11111111111111111111: must be in 0.."),
    Case("epochs-inf", (*RUN, "--epochs", "inf"), USAGE, "--epochs inf: must be a finite number",
         after=_nothing_written),
    # runs that fail: exit 1, the record says why
    Case("diverged", (*RUN, "--steps", "20", "--set", "nan_at_step=3", "--no-eval"), FAILED,
         "non-finite loss at step 3", after=_record_status("diverged")),
]


@pytest.mark.parametrize("case", MATRIX, ids=[c.name for c in MATRIX])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a default run folder would land here, not in the repo
    monkeypatch.delenv("HARNESS_DEBUG", raising=False)
    out = tmp_path / "out"
    if case.setup is not None:
        case.setup(out)
    def expand(text: str) -> str:
        return text.replace("{out}", str(out)).replace("{tmp}", str(tmp_path))

    for name, value in case.env.items():
        monkeypatch.setenv(name, expand(value))
    argv = [expand(a) for a in case.argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if case.says:
        assert len(lines) == 1, lines
        assert expand(case.says) in lines[0], lines[0]
    else:
        assert lines == []
    if case.after is not None:
        case.after(out)
    assert not (tmp_path / "runs").exists() or case.code == OK


def _fail_writes_into(monkeypatch: pytest.MonkeyPatch, folder: Path, module: Any,
                      name: str) -> None:
    """Writes into `folder` through `module.name` raise ENOSPC, as on a full disk."""
    real = getattr(module, name)

    def full_disk(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path).resolve().parent == folder.resolve():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, name, full_disk)


def test_record_that_cannot_be_written_goes_to_the_temp_dir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import outdir

    out = tmp_path / "out"
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    _fail_writes_into(monkeypatch, out, outdir, "write_record")
    assert main(["run", "tiny", "--steps", "2", "--out", str(out)]) == FAILED
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert "No space left on device" in lines[0]
    fallback = Path(lines[0].rsplit("it is at ", 1)[1])
    assert fallback.parent == tmp_path / "tmp"
    record = json.loads(fallback.read_text())
    assert record["status"] == "failed" and "No space left" in record["error"]
    assert not (out / "record.json").exists()
    assert not (out / LOCK_NAME).exists()


def test_full_disk_at_the_checkpoint_fails_the_run_with_a_record_and_no_temp_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import runner

    out = tmp_path / "out"
    real_save = runner.torch.save

    def full_disk(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(b"torn")  # part written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(runner.torch, "save", full_disk)
    try:
        code = main(["run", "tiny", "--steps", "2", "--no-eval", "--out", str(out)])
    finally:
        monkeypatch.setattr(runner.torch, "save", real_save)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == FAILED
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
    assert f"record: {out / 'record.json'}" in lines[0]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "failed" and "No space left" in record["error"]
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "record.json"]



def test_disk_full_mid_run_the_status_line_names_the_fallback_record(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills during the run (a 200 KiB tmpfs: the checkpoint, then the record's
    final write fail): the console's status line and the error line both name the
    fallback record, not the folder that could not take it."""
    from harness import outdir, runner

    out = tmp_path / "out"
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)

    def checkpoint_fills_the_disk(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        _fail_writes_into(monkeypatch, out, outdir, "write_record")  # from now on
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(runner.torch, "save", checkpoint_fills_the_disk)
    assert main(["run", "tiny", "--steps", "2", "--no-eval", "--out", str(out)]) == FAILED
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
    fallback = Path(lines[0].rsplit("it is at ", 1)[1])
    assert fallback.parent == tmp_path / "tmp"
    status = [line for line in captured.out.splitlines() if "[harness] status" in line]
    assert status and status[-1].endswith(f"record {fallback}"), status
    assert json.loads(fallback.read_text())["status"] == "failed"
    assert not (out / "record.json").exists()  # its "running" version would lie

def test_internal_error_says_bug_and_where_the_traceback_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.cli

    def broken(args: Any) -> int:
        raise KeyError("oops")

    monkeypatch.setattr(harness.cli, "cmd_list", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.delenv("HARNESS_DEBUG", raising=False)
    assert main(["list"]) == FAILED
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "this is a bug" in lines[0] and "KeyError" in lines[0], lines
    written = Path(lines[0].split("full traceback in ")[1].split(" ")[0])
    assert written.parent == tmp_path and "Traceback" in written.read_text()


@pytest.mark.parametrize("how", ["flag-before-verb", "flag-after-verb", "env"])
def test_debug_prints_the_traceback(how: str, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_DEBUG", raising=False)
    argv = ["run", "tiny", "--steps", "0"]
    if how == "flag-before-verb":
        argv.insert(0, "--debug")
    elif how == "flag-after-verb":
        argv.append("--debug")
    else:
        monkeypatch.setenv("HARNESS_DEBUG", "1")
    assert main(argv) == USAGE
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("--steps 0: must be >= 1")


def test_default_run_folders_differ_within_one_second() -> None:
    names = {default_run_folder("tiny", "cpu", "fp32") for _ in range(50)}
    assert len(names) == 50


@pytest.mark.slow  # two harness processes: ~50 s on the loaded 2-core CI machine
def test_second_concurrent_run_into_one_folder_fails_fast(tmp_path: Path) -> None:
    """A real second process: the first holds the folder while it trains."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.cli", "run", "tiny", "--steps", "400", "--set",
           "sleep_s=0.01", "--no-eval", "--log-interval", "1", "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        for line in first.stdout:  # training has started: the folder is claimed
            if line.startswith("Epoch 0, iter 2/"):
                break
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        first.terminate()
        first.communicate(timeout=120)
    lines = second.stderr.splitlines()
    assert second.returncode == USAGE, second.stderr
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0], lines
    assert json.loads((out / "record.json").read_text())["status"] == "interrupted"
    assert not (out / LOCK_NAME).exists()


def _coco(tmp_path: Path, images: list[Any], bbox: list[Any]) -> Path:
    path = tmp_path / "instances_train2017.json"
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox}] if images else []
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "car"}]}))
    return path


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_coco_non_finite_bbox_is_a_dataset_error(bad: str, tmp_path: Path) -> None:
    from harness.errors import DatasetError
    from workloads.datasets.coco import load_instances

    image = [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}]
    path = _coco(tmp_path, image, [1.0, 2.0, 3.0, 4.0])
    path.write_text(path.read_text().replace("3.0", bad))  # json.dumps cannot write them
    with pytest.raises(DatasetError, match=r"annotations\[0\]\.bbox has a non-finite") as info:
        load_instances(path)
    assert str(path) in str(info.value)


def test_coco_empty_split_is_a_dataset_error(tmp_path: Path) -> None:
    from harness.errors import DatasetError
    from workloads.datasets.coco import load_instances

    path = _coco(tmp_path, [], [])
    with pytest.raises(DatasetError, match="images is empty") as info:
        load_instances(path)
    assert str(path) in str(info.value)


def test_record_that_fails_at_the_end_leaves_no_stale_running_record(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The start record was written, the final one cannot be: the folder must not keep the
    stale `running` record; the finished one is at the printed path, exit 1."""
    from harness import outdir

    out = tmp_path / "out"
    real = outdir.write_record
    calls: list[Path] = []

    def full_after_first(path: Path, data: Any) -> None:
        calls.append(path)
        if len(calls) > 1 and Path(path).parent == out:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(outdir, "write_record", full_after_first)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the fallback record lands here, not in /tmp
    monkeypatch.setattr("tempfile.tempdir", None)
    assert main(["run", "tiny", "--steps", "2", "--no-eval", "--out", str(out)]) == FAILED
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
    record = json.loads(Path(lines[0].rsplit("it is at ", 1)[1]).read_text())
    assert record["status"] == "ok" and record["throughput"]["optimizer_steps"] == 2
    assert "No space left" in record["record_error"]
    assert not (out / "record.json").exists() and not (out / LOCK_NAME).exists()


def test_torch_save_on_a_full_disk_is_reported_as_no_space(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from harness import runner

    def torch_zip_writer_on_full_disk(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(b"torn")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1536")

    monkeypatch.setattr(runner.torch, "save", torch_zip_writer_on_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(200, 200, 0))

    class FakeRun:
        trained_model = runner.torch.nn.Linear(1, 1)
        step = 1
        optimizer = None
        ema = None
        config = type("C", (), {"workload": "tiny"})()
        workload = type("W", (), {"config": None})()

    monkeypatch.setattr(runner, "config_to_dict", lambda c: {})
    with pytest.raises(OSError) as info:
        runner.save_checkpoint(FakeRun(), tmp_path / "checkpoint.pt")  # type: ignore[arg-type]
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,says", [
    (["show", ".", "--score-thr", "nan"], "--score-thr nan: a prediction score threshold in [0, 1]"),
    (["show", ".", "--score-thr", "2"], "--score-thr 2.0: a prediction score threshold in [0, 1]"),
    (["show", ".", "--n", "0"], "--n 0: at least one sample to draw"),
    (["run", "yolov3", "--resume", "somewhere"], "takes no WORKLOAD"),
])
def test_issue_24_option_values_are_one_line(argv: list[str], says: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main as harness_main

    assert harness_main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and says in err[0], err


def test_parity_figure_into_a_folder_names_the_file_it_wrote(tmp_path: Path) -> None:
    from harness.parity_figure import figure
    from harness.parity import build
    from harness.records import Record

    rec = Record(kind="train", workload="w", scale="smoke", backend="cpu", mode="eager",
                 precision="fp32", status="ok", metrics={"AP": 0.5})
    out = figure(build([rec, rec]), tmp_path)
    assert out == tmp_path / "parity.png" and out.is_file()
    bare = figure(build([rec, rec]), tmp_path / "fig")
    assert bare == tmp_path / "fig.png" and bare.is_file()


def test_a_crafted_pickle_is_refused_without_torchs_warnings(tmp_path: Path) -> None:
    """pytest keeps warnings off stderr, so the matrix cannot see torch's "Detected pickle
    protocol 4" lines: record them here (issue 24: printed beside the one line)."""
    import warnings

    from harness.safe_load import UnsafeCheckpoint, safe_torch_load

    _crafted_pickle(tmp_path / "out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnsafeCheckpoint, match="unpickling such a file can run code"):
            safe_torch_load(tmp_path / "ckpt.pt")
    assert [str(w.message) for w in caught] == []


def test_full_disk_while_logging_names_the_log_file_not_the_console_plugin(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24: it read "plugin 'harness.console' hook harness_step_end raised OSError"."""
    import io

    from harness import console

    class FullDisk(io.StringIO):
        name = str(tmp_path / "out" / "log.jsonl")

        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(console, "open", lambda *a, **k: FullDisk(), raising=False)
    out = tmp_path / "out"
    assert main(["run", "tiny", "--steps", "2", "--log-interval", "1", "--no-eval",
                 "--out", str(out)]) == FAILED
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"harness: error: {out / 'log.jsonl'}: No space left on device (free space "
                     f"or choose another location) (record: {out / 'record.json'})"]
    assert json.loads((out / "record.json").read_text())["status"] == "failed"


def test_full_disk_at_the_lock_names_it_and_leaves_no_empty_lock(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24: a disk full before the run printed an empty path and left an empty lock."""
    from harness import outdir

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def __enter__(self) -> "FullDisk":
            return self

        def __exit__(self, *exc: Any) -> None:
            os.close(self.fd)

        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outdir.os, "fdopen",
                        lambda fd, mode="r", *a, **k: FullDisk(fd) if mode == "w"
                        else real_fdopen(fd, mode, *a, **k))
    out = tmp_path / "out"
    assert main(["run", "tiny", "--steps", "1", "--out", str(out)]) == USAGE
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"harness: error: --out {out}: {out / LOCK_NAME}: No space left on device "
                     f"(free space or choose another location)"]
    assert list(out.iterdir()) == []


def test_full_disk_during_export_names_the_file_and_leaves_no_torn_onnx(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24: it blamed the workload ("does not export to ONNX") and left a torn .onnx."""
    import shutil

    import torch

    from harness.export import export_onnx

    def exporter_on_a_full_disk(model: Any, args: Any, f: str, **kwargs: Any) -> None:
        Path(f).write_bytes(b"torn")  # part written, then the writer fails as torch's does
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096")

    monkeypatch.setattr(torch.onnx, "export", exporter_on_a_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(200, 200, 0))

    class Workload:
        name = "tiny"

    out = tmp_path / "model.onnx"
    with pytest.raises(OSError) as info:
        export_onnx(Workload(), torch.nn.Linear(3, 2), (torch.ones(2, 3),),  # type: ignore[arg-type]
                    torch.ones(2, 2), out)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(out))
    assert list(tmp_path.iterdir()) == []
