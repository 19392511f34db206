"""Derived files (nuScenes infos) of a read-only dataset root go to the cache, not the root."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from workloads.datasets import derived
from workloads.datasets.derived import cache_folder, derived_folder, root_is_writable, write_pickle

SMALL = dict(num_scenes=2, samples_per_scene=3, image_size=(160, 90), objects_per_scene=6, seed=3)


def _read_only(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable_again(path: Path) -> None:
    for dirpath, _, _ in os.walk(path):
        Path(dirpath).chmod(0o755)


@pytest.fixture
def fresh_root(tmp_path: Path) -> Path:
    pytest.importorskip("nuscenes", reason="nuscenes-devkit (extra 'bevdepth') is not installed")
    from workloads.datasets.nuscenes import write_synthetic_nuscenes

    root = write_synthetic_nuscenes(tmp_path / "mount" / "nuscenes", **SMALL)
    yield root
    _writable_again(tmp_path / "mount")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_infos_of_a_read_only_root_go_to_the_cache(fresh_root: Path, tmp_path: Path, monkeypatch) -> None:
    from workloads.datasets.nuscenes import load_or_create_infos

    before = _tree(fresh_root)
    if os.geteuid() == 0:  # root ignores mode bits: a read-only mount is what the probe reports
        monkeypatch.setattr(derived, "root_is_writable", lambda root: False)
    else:
        _read_only(fresh_root)
        assert not root_is_writable(fresh_root)
    cache = tmp_path / "cache"
    infos = load_or_create_infos(fresh_root, "v1.0-mini", cache)
    assert infos["train"] and infos["val"]
    assert _tree(fresh_root) == before  # nothing written into the dataset
    written = sorted(p.name for p in (cache / "derived").rglob("*.pkl"))
    assert written == ["nuscenes_infos_train.pkl", "nuscenes_infos_val.pkl"]
    folder = next((cache / "derived").iterdir())
    assert folder.name.startswith("nuscenes-")
    assert oct(stat.S_IMODE((folder / "nuscenes_infos_val.pkl").stat().st_mode)) != oct(0o600)
    # the second run reads them back instead of converting again
    mtime = (folder / "nuscenes_infos_val.pkl").stat().st_mtime_ns
    again = load_or_create_infos(fresh_root, "v1.0-mini", cache)
    assert [i["sample_token"] for i in again["val"]] == [i["sample_token"] for i in infos["val"]]
    assert (folder / "nuscenes_infos_val.pkl").stat().st_mtime_ns == mtime


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod a-w does not stop root's writes")
def test_the_write_probe_sees_a_chmod_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    assert root_is_writable(folder)
    folder.chmod(0o555)
    try:
        assert not root_is_writable(folder)
    finally:
        folder.chmod(0o755)


def test_a_writable_root_keeps_its_infos_as_before(fresh_root: Path, tmp_path: Path) -> None:
    from workloads.datasets.nuscenes import load_or_create_infos

    load_or_create_infos(fresh_root, "v1.0-mini", tmp_path / "cache")
    assert (fresh_root / "nuscenes_infos_train.pkl").is_file()
    assert not (tmp_path / "cache" / "derived").exists()
    assert not list(fresh_root.glob(".*.tmp")) and not list(fresh_root.glob(".harness-write-probe-*"))


def test_files_in_the_root_win_over_the_cache(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    cached = cache_folder(root, tmp_path / "cache")
    cached.mkdir(parents=True)
    for folder in (root, cached):
        write_pickle(folder / "a.pkl", [str(folder)])
    assert derived_folder(root, ["a.pkl"], tmp_path / "cache") == (root, True)
    (root / "a.pkl").unlink()
    assert derived_folder(root, ["a.pkl"], tmp_path / "cache") == (cached, True)
    shutil.rmtree(cached)
    monkeypatch.setattr(derived, "root_is_writable", lambda root: False)
    assert derived_folder(root, ["a.pkl"], tmp_path / "cache") == (cached, False)
    assert cached.is_dir()


def test_the_cache_key_follows_the_path_and_the_stamp_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "nuscenes", tmp_path / "b" / "nuscenes"
    for root in (a, b):
        root.mkdir(parents=True)
        (root / "t.json").write_text("[]")
    assert cache_folder(a, tmp_path) != cache_folder(b, tmp_path)
    before = cache_folder(a, tmp_path, [a / "t.json"])
    (a / "t.json").write_text("[1, 2]")  # a changed table: new derived files, not stale ones
    assert cache_folder(a, tmp_path, [a / "t.json"]) != before
    assert cache_folder(a, None).parent == derived.default_cache() / "derived"


@pytest.mark.parametrize("workload, prefix", [("bevdepth", "nuscenes_infos"),
                                              ("streampetr", "streampetr_infos")])
def test_a_workload_reads_a_read_only_root_end_to_end(workload: str, prefix: str, fresh_root: Path,
                                                      tmp_path: Path, monkeypatch) -> None:
    # What `harness run <workload> --data /ro/nuscenes` does: the workload's own datasets() call.
    from harness.plugins import get_workload

    before = _tree(fresh_root)
    monkeypatch.setattr(derived, "root_is_writable", lambda root: False)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "harness-cache"))
    cls = get_workload(workload)
    wl = cls(cls.presets()["smoke"])
    data = wl.datasets(fresh_root, tmp_path / "run-cache")
    assert len(data.train) > 0 and len(data.val) > 0
    assert _tree(fresh_root) == before
    # into the run's cache (--cache-dir), not $HARNESS_CACHE
    written = sorted(p.name for p in (tmp_path / "run-cache" / "derived").rglob("*.pkl"))
    assert written == [f"{prefix}_train.pkl", f"{prefix}_val.pkl"]
    assert not (tmp_path / "harness-cache").exists()
    assert "derived" in data.from_data["ida_resize_lim"]  # it names the infos file it read
    mtime = next((tmp_path / "run-cache" / "derived").rglob("*_val.pkl")).stat().st_mtime_ns
    again = wl.datasets(fresh_root, tmp_path / "run-cache")  # read back, not converted again
    assert len(again.val) == len(data.val)
    assert next((tmp_path / "run-cache" / "derived").rglob("*_val.pkl")).stat().st_mtime_ns == mtime
