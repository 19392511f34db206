"""Synthetic datasets written once into the cache, atomically.

A finished copy is recognised by its marker file holding the writer's identity (its spec);
writing goes into a temporary folder renamed into place, so an interrupted or concurrent write
never leaves a half-written dataset where a reader would take it for a complete one.

Temporary folders are named `.<name>.<host>.<pid>.<random>`: a writer killed outright
(SIGKILL, OOM killer, power) cannot remove its own, so the next writer of that name removes
those whose process on this host is gone. Folders of other hosts (a shared cache) are left
alone, as the pid says nothing there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

MARKER = ".complete"
# A temp folder without the host/pid tag (written before it existed) counts as orphaned
# once it is this old: no synthetic writer runs for a day.
UNTAGGED_ORPHAN_AGE_S = 24 * 3600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporary folders for dataset folder `name`."""
    return f".{name}.{_host()}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return pid > 0


def remove_orphaned_temps(parent: Path, name: str) -> list[Path]:
    """Remove the temporary folders of dead writers of `name` in `parent`; return them."""
    removed: list[Path] = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    start, host = f".{name}.", _host()
    for entry in entries:
        if not entry.name.startswith(start) or not entry.is_dir() or entry.is_symlink():
            continue
        tag = entry.name[len(start):].split(".")
        if len(tag) == 3 and tag[1].isdigit():
            orphan = tag[0] == host and not _pid_alive(int(tag[1]))
        else:  # the older untagged name (".<name>.<random>"): judged by its age
            try:
                orphan = (len(tag) == 1 and
                          time.time() - entry.stat().st_mtime > UNTAGGED_ORPHAN_AGE_S)
            except OSError:
                continue
        if orphan:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def make_temp_folder(parent: Path, name: str) -> Path:
    """A fresh temporary folder for writing dataset folder `name` in `parent`, after the
    orphans of dead writers are removed."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    remove_orphaned_temps(parent, name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(name), dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the renamed dataset from the group
    return tmp


def write_once(cache_dir: Path, name: str, identity: Any, fill: Callable[[Path], None],
               marker: str = MARKER) -> Path:
    """Return `cache_dir/name`, calling `fill(tmp_folder)` first unless a copy whose marker
    equals `identity` (compared through JSON) is already there."""
    cache_dir = Path(cache_dir)
    final = cache_dir / name
    wanted = json.loads(json.dumps(identity))

    def complete() -> bool:
        try:
            return json.loads((final / marker).read_text()) == wanted
        except (OSError, json.JSONDecodeError):
            return False

    if complete():
        return final
    tmp = make_temp_folder(cache_dir, final.name)
    try:
        fill(tmp)
        (tmp / marker).write_text(json.dumps(wanted))
        if final.exists():
            if complete():  # another process finished first; its copy is as good as ours
                return final
            shutil.rmtree(final, ignore_errors=True)  # a stale copy without a matching marker
        try:
            os.rename(tmp, final)
        except OSError:  # lost a race to another writer between the check and the rename
            if not complete():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
