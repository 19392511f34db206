"""A run's files are readable like any other output, and a run that fails before training
leaves a record saying why (never an empty folder)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from harness.records import write_json_atomic
from tests.conftest import harness_cmd


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_records_are_written_with_the_umask_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "record.json", {"a": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "record.json") == _mode(plain) == 0o644
    assert json.loads((tmp_path / "record.json").read_text()) == {"a": 1}


def test_run_record_has_the_mode_of_the_other_run_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(harness_cmd("run", "tiny", "--backend", "cpu", "--steps", "4",
                                      "--out", str(out)), capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr
    assert _mode(out / "record.json") == _mode(out / "log.jsonl") == 0o644


def test_a_run_failing_on_its_data_leaves_a_record_that_says_why(tmp_path: Path) -> None:
    empty = tmp_path / "not-coco"
    empty.mkdir()
    out = tmp_path / "run"
    proc = subprocess.run(harness_cmd("run", "yolov3", "--backend", "cpu", "--data", str(empty),
                                      "--out", str(out)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "instances_train2017.json" in proc.stderr
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "failed"
    assert "instances_train2017.json" in record["error"]
    assert list(out.iterdir()) == [out / "record.json"]
