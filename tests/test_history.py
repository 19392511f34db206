"""`harness history` and `harness gate --history` on synthetic records (no training)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from harness.cli import main
from harness.history import build
from harness.records import Record, write_record
from harness.reference import load_records

pytest.importorskip("pandas")


def _record(root: Path, name: str, sha: str, backend: str, hour: int, fps: float,
            accuracy: float = 0.9, mem_mib: float = 500.0, device: str = "dev") -> Path:
    record = Record(kind="train", workload="tiny", scale="smoke", backend=backend, mode="eager",
                    precision="fp32", status="ok", primary_metric="accuracy",
                    metrics={"accuracy": accuracy, "error": 1 - accuracy},
                    throughput={"samples_per_s": fps},
                    memory={"device_peak_allocated_bytes": int(mem_mib * 2**20)},
                    env={"git_sha": sha, "host": "ci", "device_name": device},
                    started_at=f"2026-03-01T{hour:02d}:00:00+00:00")
    path = root / name / "record.json"
    path.parent.mkdir(parents=True)
    write_record(path, record)
    return path


@pytest.fixture
def history_dir(tmp_path: Path) -> Path:
    """Commit aaa (2 runs per backend), then bbb (1 run each); cpu at bbb is 30% slower."""
    root = tmp_path / "history"
    _record(root, "a-cpu-1", "a" * 40, "cpu", 1, 100.0, 0.90)
    _record(root, "a-cpu-2", "a" * 40, "cpu", 2, 101.0, 0.91)
    _record(root, "a-cuda-1", "a" * 40, "cuda", 1, 1000.0, 0.90, device="H100")
    _record(root, "a-cuda-2", "a" * 40, "cuda", 2, 1004.0, 0.90, device="H100")
    _record(root, "b-cpu-1", "b" * 40, "cpu", 5, 70.0, 0.90)
    _record(root, "b-cuda-1", "b" * 40, "cuda", 5, 1002.0, 0.91, device="H100")
    return root


def test_history_table_per_commit_and_backend(history_dir: Path) -> None:
    h = build(load_records([history_dir]))
    assert h.columns == ["accuracy", "samples/s", "peak MiB"]
    assert [(r["commit"], r["series"], r["runs"]) for r in h.rows] == [
        ("aaaaaaaaaa", "cpu/fp32", 2), ("aaaaaaaaaa", "cuda/fp32", 2),
        ("bbbbbbbbbb", "cpu/fp32", 1), ("bbbbbbbbbb", "cuda/fp32", 1)]
    assert h.rows[0]["samples/s"] == pytest.approx(100.5)
    assert h.rows[0]["accuracy"] == pytest.approx(0.905)
    # The cpu step at bbb is beyond the noise; cuda's +0.0% is not.
    assert [r["change"] for r in h.rows] == ["", "", "samples/s -30.3%", ""]
    only = build(load_records([history_dir]), backend="cuda", metric="accuracy,error",
                 since="2026-03-01T02:00")
    assert [r["commit"] for r in only.rows] == ["aaaaaaaaaa", "bbbbbbbbbb"]
    assert only.columns[:2] == ["accuracy", "error"] and only.rows[0]["runs"] == 1
    assert only.left_out == {"other backend": 3, "before --since": 1}


def test_history_cli_prints_formats_and_writes_the_figure(
        history_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "history.png"
    assert main(["history", str(history_dir), "--figure", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| started | commit | workload | scale | series | runs | accuracy")
    assert "| bbbbbbbbbb |" in out and "samples/s -30.3%" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["history", str(history_dir), "--format", "csv", "--workload", "tiny"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and rows[2]["change"] == "samples/s -30.3%"
    assert main(["history", str(history_dir), "--format", "html", "--figure", str(png)]) == 0
    page = capsys.readouterr().out
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert main(["history", str(history_dir), "--since", "yesterday"]) == 2
    assert main(["history", str(history_dir), "--workload", "yolov3"]) == 2


def test_gate_history_passes_an_unchanged_run_and_fails_a_slower_one(
        history_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same = _record(tmp_path / "cand", "same", "c" * 40, "cuda", 9, 1001.0, device="H100")
    slow = _record(tmp_path / "cand", "slow", "d" * 40, "cuda", 9, 0.7 * 1002.0, device="H100")
    assert main(["gate", str(same), "--history", str(history_dir), "--last", "3"]) == 0
    out = capsys.readouterr().out
    assert "compared with the last 3 comparable run(s):" in out
    for name in ("a-cuda-1", "a-cuda-2", "b-cuda-1"):  # the runs compared with, named
        assert f"{name}/record.json" in out
    assert "3x other backend" in out and "3x other device" in out  # the cpu runs, left out
    assert main(["gate", str(slow), "--history", str(history_dir)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: 701.4 samples/s, -30.0%" in out
    # Nothing comparable (another device): no baseline, a failure that says why.
    other = _record(tmp_path / "cand", "other", "e" * 40, "cuda", 9, 1000.0, device="A100")
    assert main(["gate", str(other), "--history", str(history_dir)]) == 1
    assert "no comparable ok run in the history" in capsys.readouterr().out
    assert main(["gate", str(same)]) == 2  # neither --baseline nor --history
    assert main(["gate", str(same), "--history", str(history_dir), "--last", "0"]) == 2
