"""The cache folder (synthetic data, derived files of a read-only --data root): which one a
job uses, and one up-front check that it can be written.

Without the check, a cache path that is a file, lies under a file or is read-only fails
deep in a workload's data writer, as a `failed` record whose line does not say it is the
cache. It runs before the run folder is claimed, creates nothing, and names where the path
came from (`--cache-dir` or `$HARNESS_CACHE`).
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.errors import UsageError

ENV = "HARNESS_CACHE"


def default_cache() -> Path:
    """`$HARNESS_CACHE`, else ~/.cache/perception-harness (read when asked, not at import)."""
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "perception-harness")


def cache_root(cache_dir: Path | str | None) -> Path:
    """The job's cache folder: `--cache-dir` if given, else the default."""
    return Path(cache_dir) if cache_dir else default_cache()


def _unusable(path: Path) -> str | None:
    """Why `path` cannot be (created and) written as a folder, or None when it can."""
    if path.exists():
        if not path.is_dir():
            return "is a file, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"is {_not_writable(path)}"
        return None
    parent = path.parent
    while not parent.exists():  # the nearest existing ancestor decides whether mkdir works
        parent = parent.parent
    if not parent.is_dir():
        return f"lies under {parent}, which is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is {_not_writable(parent)}"
    return None


def _not_writable(folder: Path) -> str:
    """Why access() said no: a read-only mount, or the permissions."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "on a read-only file system" if read_only else "not writable (check its permissions)"


def check_cache_dir(cache_dir: Path | str | None, needed: bool = True) -> Path:
    """The job's cache folder, or a UsageError (exit 2) naming it when it cannot be written.

    `needed`: the job writes synthetic data there (no --data). A cache the user chose
    (`--cache-dir`, `$HARNESS_CACHE`) is checked even when it is not needed yet: a --data
    root that turns out read-only puts its derived files there."""
    root = cache_root(cache_dir)
    source = ("--cache-dir" if cache_dir else f"${ENV}" if os.environ.get(ENV) else
              "the default cache folder")
    if not (needed or cache_dir or os.environ.get(ENV)):
        return root
    why = _unusable(root)
    if why is not None:
        fix = "choose another --cache-dir" + ("" if cache_dir else f" or {ENV}")
        raise UsageError(f"cache folder {root} ({source}) {why}: {fix}")
    return root

