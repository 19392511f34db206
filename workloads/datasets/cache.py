"""Synthetic datasets written once into the cache, atomically.

A finished copy is recognised by its marker file holding the writer's identity (its spec);
writing goes into a temporary folder renamed into place, so an interrupted or concurrent write
never leaves a half-written dataset where a reader would take it for a complete one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

MARKER = ".complete"


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
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
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
