"""The run folder: claimed by one run at a time, never mixed with a previous run, and a
record that is written somewhere even when the folder cannot take it.

- `claim_run_folder`: creates the folder, takes `.harness.lock` (holding the pid) so a
  second concurrent run into it fails fast, and refuses a folder that already holds a run
  (record.json) unless `--overwrite` (its files are cleared first) or `--resume`.
- `default_run_folder`: runs/<workload>-<backend>-<precision>-<time>-<random>, unique even
  for runs started in the same second.
- `RecordWriter`: writes record.json atomically; when that fails (disk full, read-only) it
  writes the record to the platform temp dir instead and remembers both paths, so the
  caller can say in one line where the record went.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UsageError
from harness.records import Record, write_record

LOCK_NAME = ".harness.lock"


class RecordNotWritten(HarnessError):
    """record.json could not be written where asked; it went to a fallback path (exit 1)."""


def os_error_line(exc: OSError, what: str = "") -> str:
    """'PATH: strerror' with a hint at the fix, for an OSError on a path the user chose."""
    name = exc.filename if exc.filename is not None else what
    reason = exc.strerror or str(exc)
    hint = {errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
            errno.EROFS: "choose a writable location", errno.ENOSPC: "free space or choose "
            "another location", errno.ENOTDIR: "a path component is a file, not a folder",
            errno.EEXIST: "remove it or choose another path",
            errno.ENOENT: "check the path"}.get(exc.errno or 0, "")
    return f"{name}: {reason}" + (f" ({hint})" if hint else "")


def default_run_folder(workload: str, backend: str, precision: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    from harness.sources import file_name

    workload = file_name(workload)  # mmdet:path/to/x.py -> mmdet-x: no slashes in a folder
    # The random tail keeps two runs started in the same second apart.
    return Path("runs") / f"{workload}-{backend}-{precision}-{stamp}-{secrets.token_hex(3)}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunFolder:
    """A claimed run folder; `release()` removes the lock if it is still ours."""

    def __init__(self, path: Path, lock: Path | None) -> None:
        self.path = path
        self.lock = lock

    def release(self) -> None:
        if self.lock is None:
            return
        try:
            if self.lock.read_text().strip() == str(os.getpid()):
                self.lock.unlink()
        except OSError:
            pass
        self.lock = None


def _take_lock(folder: Path) -> Path:
    lock = folder / LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                holder = 0  # torn or vanished: a dead writer's
            if holder != os.getpid() and _pid_alive(holder):
                raise UsageError(f"--out {folder} is in use by another run (pid {holder}, lock "
                                 f"file {lock}): wait for it or choose another --out") from None
            lock.unlink(missing_ok=True)  # stale: its holder is gone
            continue
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
        except OSError as exc:  # a full disk: no empty lock left behind, and the line
            lock.unlink(missing_ok=True)  # names the file that could not be written
            raise OSError(exc.errno, exc.strerror, str(lock)) from exc
        return lock
    raise UsageError(f"--out {folder}: could not take the lock file {lock} (another run keeps "
                     f"re-creating it): choose another --out")


def _clear(folder: Path) -> None:
    """Remove the previous run's files (everything but our lock)."""
    for entry in folder.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def claim_run_folder(folder: Path, *, overwrite: bool = False, resume: bool = False,
                     main: bool = True) -> RunFolder:
    """Create and lock `folder` for this run (rank 0 only: other ranks share rank 0's claim)."""
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out {folder} is a file, not a folder: choose another --out")
        folder.mkdir(parents=True, exist_ok=True)
        if not main:
            return RunFolder(folder, None)
        lock = _take_lock(folder)
    except OSError as exc:
        raise UsageError(f"--out {folder}: {os_error_line(exc)}") from None
    claimed = RunFolder(folder, lock)
    try:
        if (folder / "record.json").exists() and not resume:
            if not overwrite:
                raise UsageError(f"--out {folder} already holds a run ({folder / 'record.json'}): "
                                 f"pass --overwrite to replace it, --resume {folder} to "
                                 f"continue it, or choose another --out")
            _clear(folder)
    except OSError as exc:
        claimed.release()
        raise UsageError(f"--overwrite {folder}: {os_error_line(exc)}") from None
    except BaseException:
        claimed.release()
        raise
    return claimed


class RecordWriter:
    """record.json at `path`; after a failed write every later write goes to `fallback`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fallback: Path | None = None
        self.failure: str | None = None

    def write(self, record: Record) -> None:
        if self.fallback is None:
            try:
                write_record(self.path, record)
                return
            except OSError as exc:
                self.failure = os_error_line(exc, str(self.path))
                fd, name = tempfile.mkstemp(prefix=f"harness-record-{os.getpid()}-",
                                            suffix=".json")
                os.close(fd)
                self.fallback = Path(name)
                # An earlier version there (status "running") would now lie: the line
                # printed at the end points at the fallback instead.
                with contextlib.suppress(OSError):
                    self.path.unlink(missing_ok=True)
                record.record_error = f"record.json could not be written: {self.failure}"
        write_record(self.fallback, record)

    def line(self, cause: str = "") -> str:
        """One line: what failed first (if anything), then where the record is."""
        lead = f"{cause}; " if cause else ""
        return (f"{lead}the record could not be written to {self.path} ({self.failure}); "
                f"it is at {self.fallback}")


def write_predictions(workload: Any, predictions: list[Any],
                      out_dir: Path) -> dict[str, Any] | None:
    """The workload's submission file under <out>/predictions; its path relative to the
    job's folder (a run's or an evaluation's)."""
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    info = workload.write_predictions(predictions, pred_dir.resolve())
    if info is None:
        with contextlib.suppress(OSError):
            pred_dir.rmdir()  # nothing written: no empty folder left behind
        return None
    info = dict(info)
    if info.get("path"):
        path = Path(info["path"])
        if not path.is_absolute():
            path = pred_dir.resolve() / path
        info["path"] = os.path.relpath(path, out_dir.resolve())
    return info
