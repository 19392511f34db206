"""TuSimple layout: synthetic writer -> reader round trip, validation messages, drivable masks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.errors import DatasetError
from workloads.datasets import tusimple
from workloads.datasets.tusimple_synth import SynthSpec, write_synthetic_tusimple


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_tusimple(tmp_path_factory.mktemp("ts"), SynthSpec(train_frames=6, test_frames=3))


def test_writer_makes_the_tusimple_layout(root: Path) -> None:
    assert sorted(p.name for p in root.glob("label_data_*.json")) == ["label_data_0313.json",
                                                                     "label_data_0601.json"]
    train, test = tusimple.load_split(root, "train"), tusimple.load_split(root, "test")
    assert (len(train), len(test)) == (6, 3)
    for frame in train + test:
        assert frame.raw_file.startswith("clips/") and frame.raw_file.endswith("/20.jpg")
        with Image.open(root / frame.raw_file) as im:
            assert im.size == (1280, 720)
        assert frame.h_samples[0] in (160, 240) and frame.h_samples[-1] == 710
        assert np.all(np.diff(frame.h_samples) == 10)
        assert frame.lanes.shape[1] == len(frame.h_samples) and 2 <= len(frame.lanes) <= 5
        assert (frame.lanes == -2).any()  # absent rows are -2, as TuSimple
        assert tusimple.mask_path(root, frame.raw_file).is_file()
    # JSON lines, one object per frame
    lines = (root / "test_label.json").read_text().splitlines()
    assert len(lines) == 3 and set(json.loads(lines[0])) == {"lanes", "h_samples", "raw_file"}


def test_derived_mask_agrees_with_the_written_mask(root: Path) -> None:
    for frame in tusimple.load_split(root, "train"):
        written, source = tusimple.drivable_mask(root, frame, (1280, 720))
        derived, derived_source = tusimple.drivable_mask(root, frame, (1280, 720), use_file=False)
        assert (source, derived_source) == ("file", "derived")
        iou = (written & derived).sum() / (written | derived).sum()
        assert iou > 0.9, iou


def test_derived_mask_lies_between_the_outermost_lanes() -> None:
    h = np.arange(300, 711, 10)
    left = np.linspace(600, 200, len(h))
    mid = np.linspace(640, 640, len(h))
    right = np.linspace(680, 1100, len(h))
    frame = tusimple.LaneFrame("x.jpg", np.stack([mid, right, left]), h, "f", 1)
    mask = tusimple.derive_drivable_mask(frame, (1280, 720))
    assert mask[700, 640] == 1 and mask[700, 150] == 0 and mask[700, 1150] == 0
    assert mask[250].sum() == 0  # nothing above the lanes
    one = tusimple.LaneFrame("x.jpg", mid[None], h, "f", 1)
    assert tusimple.derive_drivable_mask(one, (1280, 720)).sum() == 0


def _write(tmp_path: Path, line: object) -> Path:
    path = tmp_path / "test_label.json"
    path.write_text(json.dumps(line) + "\n")
    return path


@pytest.mark.parametrize(("line", "needle"), [
    ({"lanes": [[1, 2]], "h_samples": [700, 710, 720]}, "missing the 'raw_file' field"),
    ({"lanes": [[1, 2]], "h_samples": [700, 710, 720], "raw_file": "a.jpg"},
     "field 'lanes'[0] has 2 values but 'h_samples' has 3"),
    ({"lanes": [], "h_samples": [710, 700], "raw_file": "a.jpg"}, "field 'h_samples' must increase"),
    ({"lanes": [["a", 2]], "h_samples": [700, 710], "raw_file": "a.jpg"}, "field 'lanes'[0] must be"),
])
def test_malformed_labels_name_file_line_and_field(tmp_path: Path, line: dict, needle: str) -> None:
    path = _write(tmp_path, line)
    with pytest.raises(DatasetError) as err:
        tusimple.read_label_file(path)
    assert f"{path}:1" in str(err.value) and needle in str(err.value)


def test_missing_image_and_missing_labels_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no training labels"):
        tusimple.load_split(tmp_path, "train")
    _write(tmp_path, {"lanes": [], "h_samples": [700, 710], "raw_file": "clips/a/20.jpg"})
    with pytest.raises(DatasetError, match="field 'raw_file' names clips/a/20.jpg"):
        tusimple.load_split(tmp_path, "test")


def test_writer_without_masks_leaves_them_to_derivation(tmp_path: Path) -> None:
    spec = SynthSpec(train_frames=2, test_frames=1, image_size=(640, 360), seed=3, with_masks=False)
    root = write_synthetic_tusimple(tmp_path, spec)
    frames = tusimple.load_split(root, "train") + tusimple.load_split(root, "test")
    assert not (root / tusimple.MASK_DIR).exists()
    assert tusimple.drivable_sources(root, frames) == {"file": 0, "derived": 3}
    assert all(f.h_samples[-1] == 355 for f in frames)  # 710 scaled to 360 rows
    mask, source = tusimple.drivable_mask(root, frames[0], (640, 360))
    assert source == "derived" and mask.shape == (360, 640) and mask.sum() > 0


def test_a_finished_copy_is_reused_not_rewritten(root: Path) -> None:
    marker_time = (root / ".complete.json").stat().st_mtime_ns
    again = write_synthetic_tusimple(root.parent, SynthSpec(train_frames=6, test_frames=3))
    assert again == root and (root / ".complete.json").stat().st_mtime_ns == marker_time
