"""The one atomic file writer: a file is either its old content or the complete new one, also
across a power loss. Records (JSON) and checkpoints (torch.save) both go through it."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """`write(tmp)` fills a unique temp file beside `path` (two writers never share one;
    readable as the umask allows, not mkstemp's 0600); then fsync, rename over `path`, and
    fsync the folder so the rename itself is durable. On failure the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o666 & ~umask())
        finally:
            os.close(fd)
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # some filesystems refuse a folder fsync
        fsync_path(path.parent)


def fsync_path(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask
