"""Where a reader keeps the files it derives from a dataset root (info pickles, collections).

One policy for every reader, so a read-only dataset mount works without options:

1. files already in ROOT are used as they are (infos prepared by the original tools, or
   written there by an earlier run);
2. else files already in ROOT's derived-files folder in the cache are used;
3. else they are written into ROOT when ROOT is writable (where the original conversion
   scripts put them, so other tools find them too),
4. else into that cache folder: `<cache>/derived/<root name>-<key>/`, the key hashing ROOT's
   absolute path and the size and modification time of the `stamp` files (the tables they are
   derived from), so a changed dataset gets new files instead of stale ones.

`<cache>` is the run's `--cache-dir` where the caller passes it, else `$HARNESS_CACHE`, else
`~/.cache/perception-harness` (the harness's own default).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

DERIVED = "derived"


def default_cache() -> Path:
    """The harness's default cache folder (kept equal to harness.prepare.DEFAULT_CACHE)."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "perception-harness"))


def root_is_writable(root: Path) -> bool:
    """Whether a file can be created in root: tried, not guessed from the mode bits (root
    ignores them; a read-only mount refuses everyone)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".harness-write-probe-", dir=root)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def cache_folder(root: Path, cache_dir: Path | None = None, stamp: Iterable[Path] = ()) -> Path:
    """ROOT's derived-files folder in the cache (not created here)."""
    root = Path(root).resolve()
    key = [str(root)]
    for path in (Path(p).resolve() for p in stamp):  # absolute: the same key from any cwd
        try:
            st = path.stat()
        except OSError:
            key.append(f"{path}:missing")
        else:
            key.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    digest = hashlib.sha1("|".join(key).encode()).hexdigest()[:12]
    return Path(cache_dir if cache_dir is not None else default_cache()) / DERIVED / f"{root.name}-{digest}"


def derived_folder(root: Path, names: Sequence[str], cache_dir: Path | None = None,
                   stamp: Iterable[Path] = ()) -> tuple[Path, bool]:
    """(folder, present): the folder that holds all of `names` (present True), or the one to
    write them into (present False; created), by the policy above."""
    root = Path(root)
    stamp = list(stamp)
    cached = cache_folder(root, cache_dir, stamp)
    for folder in (root, cached):
        if names and all((folder / n).is_file() for n in names):
            return folder, True
    if root_is_writable(root):
        return root, False
    cached.mkdir(parents=True, exist_ok=True)
    return cached, False


def write_pickle(path: Path, obj: Any) -> None:
    """Pickle obj to path atomically (a reader never sees a half-written file), with the
    umask's mode like any other file (mkstemp's would be 0600: unreadable to other users)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
