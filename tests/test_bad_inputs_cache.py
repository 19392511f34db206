"""Synthetic cache writers clean up after writers that were killed (issue 15 item 5): temp
folders carry host and pid, and the next writer of that dataset removes a dead writer's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from workloads.datasets.cache import (
    UNTAGGED_ORPHAN_AGE_S,
    remove_orphaned_temps,
    temp_prefix,
    write_once,
)

ROOT = Path(__file__).resolve().parents[1]

# A writer that is SIGKILLed halfway through filling its temp folder.
_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from workloads.datasets.cache import write_once

def fill(tmp):
    (tmp / "half.txt").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)

write_once(Path(sys.argv[1]), "synth-v1", {"seed": 0}, fill)
"""


def _temps(cache: Path, name: str) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(f".{name}."))


def test_next_writer_removes_the_temp_folder_of_a_killed_writer(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(cache)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    orphans = _temps(cache, "synth-v1")
    assert len(orphans) == 1, orphans
    _, _, host, pid, _ = orphans[0].split(".")
    assert host == temp_prefix("x").split(".")[2] and int(pid) != os.getpid()
    assert (cache / orphans[0] / "half.txt").is_file()  # what SIGKILL left behind

    def fill(tmp: Path) -> None:
        (tmp / "data.txt").write_text("complete")

    final = write_once(cache, "synth-v1", {"seed": 0}, fill)
    assert (final / "data.txt").read_text() == "complete"
    assert _temps(cache, "synth-v1") == []  # the orphan is gone, and ours was renamed


def test_live_foreign_and_recent_untagged_temps_are_kept(tmp_path: Path) -> None:
    name = "synth-v1"
    live = tmp_path / f"{temp_prefix(name)}abc123"  # this (live) process's
    foreign = tmp_path / f".{name}.otherhost.1.abc123"  # another host's: its pid means nothing
    recent = tmp_path / f".{name}.k2j4h5g6"  # untagged (an older writer), fresh
    old = tmp_path / f".{name}.z9y8x7w6"  # untagged, older than a day
    other = tmp_path / f".{name}-v2.host.1.abc123"  # another dataset's
    for folder in (live, foreign, recent, old, other):
        folder.mkdir()
    stale = time.time() - UNTAGGED_ORPHAN_AGE_S - 60
    os.utime(old, (stale, stale))
    assert remove_orphaned_temps(tmp_path, name) == [old]
    assert all(p.is_dir() for p in (live, foreign, recent, other))


def test_nuscenes_writer_removes_a_dead_writers_temp_folder(tmp_path: Path) -> None:
    from workloads.datasets.nuscenes_synth import write_synthetic_nuscenes

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host_tag = temp_prefix("db").split(".")[2]
    orphan = tmp_path / f".db.{host_tag}.{int(dead.stdout)}.q1w2e3r4"
    (orphan / "samples").mkdir(parents=True)
    root = write_synthetic_nuscenes(tmp_path / "db", num_scenes=1, samples_per_scene=2,
                                    image_size=(32, 18), objects_per_scene=1,
                                    lidar_points_per_ring=8)
    assert not orphan.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]
    assert (root.stat().st_mode & 0o777) == (0o777 & ~_umask())  # not mkdtemp's 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("read_only_mount", [False, True], ids=["no-permission", "ro-mount"])
def test_read_only_cache_folder_is_one_line_before_the_run(
        read_only_mount: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24: it ended as a `failed` record (exit 1) whose line did not name the cache.
    Simulated through access()/statvfs(): chmod does not stop root, and a mount needs it."""
    from harness.cli import main

    cache = tmp_path / "cache"
    cache.mkdir()
    real_access, real_statvfs = os.access, os.statvfs

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        return False if Path(path) == cache else real_access(path, mode, *args, **kwargs)

    def statvfs(path: Any) -> Any:
        result = real_statvfs(path)
        if Path(path) == cache and read_only_mount:
            return SimpleNamespace(f_flag=result.f_flag | os.ST_RDONLY)
        return result

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "statvfs", statvfs)
    out = tmp_path / "out"
    for where in (cache, cache / "sub"):  # the folder itself, or one to be created in it
        code = main(["run", "tiny", "--steps", "1", "--cache-dir", str(where), "--out", str(out)])
        lines = capsys.readouterr().err.splitlines()
        assert code == 2 and len(lines) == 1, lines
        why = "on a read-only file system" if read_only_mount else "not writable"
        assert lines[0].startswith(f"harness: error: cache folder {where} (--cache-dir) ")
        assert f"{cache} is {why}" in lines[0] or f"is {why}" in lines[0], lines[0]
        assert not out.exists()
