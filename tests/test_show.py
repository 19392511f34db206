"""`harness show`: one short real run per workload (5 steps, the smoke preset's synthetic data),
then its predictions drawn next to the ground truth; the PNG must have the expected size and
carry a picture (not a blank canvas)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.records import SCHEMA
from tests.conftest import ROOT, harness_cmd

pytest.importorskip("matplotlib")

# workload -> the extra the drawer and the workload need (skip where it is not installed).
WORKLOADS = {"yolov3": "pycocotools", "lanes": "scipy", "bevdepth": "nuscenes",
             "openlanev2": "openlanev2", "streampetr": "nuscenes"}
# Smaller synthetic data where the preset's costs minutes to write and evaluate (the layout
# the drawer reads is the same).
SMALLER = {"bevdepth": ("--set", "synthetic_samples_per_scene=3",
                        "--set", "synthetic_image_wh=400,225")}

# The fields a record must have (harness/records.py validates what show reads).
MINIMAL_RECORD = {"schema": SCHEMA, "kind": "train", "scale": "smoke", "backend": "cpu",
                  "precision": "fp32"}


@pytest.fixture
def cache(harness_cache: Path) -> Path:
    """The session's synthetic-data cache: the smoke data the gate tests wrote is reused."""
    return harness_cache


def _run(workload: str, out: Path, cache: Path) -> Path:
    proc = subprocess.run(harness_cmd("run", workload, "--backend", "cpu", "--steps", "5",
                                      "--out", str(out), "--cache-dir", str(cache),
                                      "--no-checkpoint", *SMALLER.get(workload, ())),
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _show(run: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(harness_cmd("show", str(run), *extra), capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def _assert_picture(png: Path, min_wh: tuple[int, int]) -> None:
    with Image.open(png) as im:
        assert im.size[0] >= min_wh[0] and im.size[1] >= min_wh[1], im.size
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    non_white = (pixels < 240).any(axis=-1).mean()
    assert non_white > 0.10, f"{png}: only {non_white:.1%} of the pixels are drawn on"
    gt_green = ((pixels[..., 1] > 150) & (pixels[..., 0] < 80) & (pixels[..., 2] < 140)).sum()
    assert gt_green > 50, f"{png}: no ground truth (green) drawn"


# streampetr's run is `slow` (CI budget, ~130 s): bevdepth's covers the nuScenes drawer.
@pytest.mark.parametrize("workload", [pytest.param(w, marks=pytest.mark.slow)
                                      if w == "streampetr" else w for w in WORKLOADS])
def test_show_draws_a_real_run(workload: str, tmp_path: Path, cache: Path) -> None:
    pytest.importorskip(WORKLOADS[workload])
    run = _run(workload, tmp_path / workload, cache)
    png = tmp_path / f"{workload}.png"
    proc = _show(run, "--n", "2", "--out", str(png))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(png) in proc.stdout and "2 " in proc.stdout
    _assert_picture(png, (600, 150))


def test_show_imports_no_torch_and_loads_no_plugin(tmp_path: Path) -> None:
    """The COCO drawer on a hand-written run: record, results file, annotation file, image."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.new("RGB", (160, 120), (90, 90, 200)).save(root / "val2017" / "1.jpg")
    ann = root / "annotations" / "instances_val2017.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "width": 160, "height": 120}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 60, 50],
                         "area": 3000, "iscrowd": 0}],
        "categories": [{"id": 3, "name": "car"}]}))
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    (run / "predictions" / "dets.json").write_text(json.dumps(
        [{"image_id": 1, "category_id": 3, "bbox": [12, 11, 58, 50], "score": 0.9}]))
    (run / "record.json").write_text(json.dumps({
        **MINIMAL_RECORD, "workload": "yolov3", "status": "ok", "data": {"source": str(root)},
        "predictions": {"format": "coco-results", "path": "predictions/dets.json", "split": "val",
                        "ground_truth": str(ann)}}))
    png = tmp_path / "coco.png"
    code = ("import sys; from harness.cli import main; rc = main(['show', sys.argv[1], '--out', "
            "sys.argv[2]]); bad = [m for m in ('torch', 'harness.plugins') if m in sys.modules]; "
            "print('loaded:', bad); sys.exit(rc or (4 if bad else 0))")
    proc = subprocess.run([sys.executable, "-c", code, str(run), str(png)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_picture(png, (400, 200))


def test_a_record_without_predictions_is_one_line_exit_2(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "record.json").write_text(json.dumps({**MINIMAL_RECORD, "workload": "yolov3",
                                                 "status": "failed"}))
    proc = _show(run)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no predictions file" in lines[0] and "failed" in lines[0], lines
    assert not (run / "show.png").exists()
