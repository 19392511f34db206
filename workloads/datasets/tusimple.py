"""TuSimple lane detection: the reader of the real layout, and drivable-area masks.

Layout (TuSimple/tusimple-benchmark doc/lane_detection): ROOT/clips/<date>/<clip>/20.jpg
(1280x720; only the 20th frame of each clip is labelled), training labels in
ROOT/label_data_*.json, evaluation labels in ROOT/test_label.json. Every label file is JSON
lines: {"lanes": [[x, ...], ...], "h_samples": [y, ...], "raw_file": "clips/.../20.jpg"}
with one x per h_sample and -2 where the lane is absent; h_samples are 10-px rows ending at
710 and start at 160 or 240 depending on the subset.

Drivable area: TuSimple has none. Where ROOT/drivable/<raw_file with .png> exists it is read
(0 = not drivable, nonzero = drivable); otherwise the frame's mask is derived as the polygon
between its outermost lanes (see `derive_drivable_mask`). Each frame says which it got.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from harness.errors import DatasetError

TRAIN_GLOB = "label_data_*.json"
TEST_LABEL = "test_label.json"
MASK_DIR = "drivable"
ABSENT = -2
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class LaneFrame:
    """One labelled frame: lanes (L, N) in source pixels (-2 = absent) at h_samples (N,)."""

    raw_file: str
    lanes: np.ndarray
    h_samples: np.ndarray
    label_file: str
    line: int

    def valid_lanes(self) -> list[np.ndarray]:
        """Each lane's labelled points as an (n, 2) array of (x, y), top to bottom."""
        out = []
        for xs in self.lanes:
            keep = xs >= 0
            if keep.any():
                out.append(np.stack([xs[keep], self.h_samples[keep].astype(np.float64)], 1))
        return out


def _numbers(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)


def parse_label_line(text: str, path: Path, line: int) -> LaneFrame:
    where = f"{path}:{line}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not a JSON object ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("raw_file", "lanes", "h_samples"):
        if key not in obj:
            raise DatasetError(f"{where}: missing the '{key}' field")
    raw_file = obj["raw_file"]
    if not isinstance(raw_file, str) or not raw_file:
        raise DatasetError(f"{where}: field 'raw_file' must be a non-empty string")
    h = obj["h_samples"]
    if not _numbers(h) or not h:
        raise DatasetError(f"{where}: field 'h_samples' must be a non-empty list of numbers")
    if not all(math.isfinite(v) for v in h):  # json reads NaN/Infinity as floats
        raise DatasetError(f"{where}: field 'h_samples' has a non-finite value")
    if any(b <= a for a, b in zip(h, h[1:])):
        raise DatasetError(f"{where}: field 'h_samples' must increase strictly")
    lanes = obj["lanes"]
    if not isinstance(lanes, list):
        raise DatasetError(f"{where}: field 'lanes' must be a list of lanes")
    for i, lane in enumerate(lanes):
        if not _numbers(lane):
            raise DatasetError(f"{where}: field 'lanes'[{i}] must be a list of numbers")
        if not all(math.isfinite(v) for v in lane):
            raise DatasetError(f"{where}: field 'lanes'[{i}] has a non-finite value")
        if len(lane) != len(h):
            raise DatasetError(f"{where}: field 'lanes'[{i}] has {len(lane)} values but "
                               f"'h_samples' has {len(h)}")
    arr = np.asarray(lanes, dtype=np.float64).reshape(len(lanes), len(h))
    return LaneFrame(raw_file, arr, np.asarray(h, dtype=np.int64), str(path), line)


def read_label_file(path: Path) -> list[LaneFrame]:
    """All frames of one JSON-lines label file (blank lines skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable ({exc})") from None
    frames = [parse_label_line(t, path, i + 1) for i, t in enumerate(text.splitlines()) if t.strip()]
    if not frames:
        raise DatasetError(f"{path}: no labelled frames")
    return frames


def label_files(root: Path, split: str) -> list[Path]:
    root = Path(root)
    if split == "train":
        files = sorted(root.glob(TRAIN_GLOB))
        if not files:
            raise DatasetError(f"{root}: no training labels ({TRAIN_GLOB}) found")
        return files
    if split == "test":
        path = root / TEST_LABEL
        if not path.is_file():
            raise DatasetError(f"{path}: evaluation labels not found")
        return [path]
    raise ValueError(f"unknown TuSimple split {split!r} (valid: {SPLITS})")


def load_split(root: Path, split: str, check_images: bool = True) -> list[LaneFrame]:
    """The frames of a split; a raw_file listed twice or missing on disk names its file and line."""
    frames: list[LaneFrame] = []
    seen: dict[str, str] = {}
    for path in label_files(root, split):
        for frame in read_label_file(path):
            if frame.raw_file in seen:
                raise DatasetError(f"{path}:{frame.line}: field 'raw_file' {frame.raw_file} is "
                                   f"already labelled at {seen[frame.raw_file]}")
            seen[frame.raw_file] = f"{path}:{frame.line}"
            if check_images and not (Path(root) / frame.raw_file).is_file():
                raise DatasetError(f"{path}:{frame.line}: field 'raw_file' names "
                                   f"{frame.raw_file}, which is not under {root}")
            frames.append(frame)
    return frames


def image_size(root: Path, frame: LaneFrame) -> tuple[int, int]:
    """(width, height) of a frame's image, from its header."""
    path = Path(root) / frame.raw_file
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from None


def mask_path(root: Path, raw_file: str) -> Path:
    return Path(root) / MASK_DIR / Path(raw_file).with_suffix(".png")


def _bottom_extended(points: np.ndarray, bottom: float, width: int) -> np.ndarray:
    """A lane's points plus one at the bottom row, extrapolated linearly from its last two
    points (a side lane leaves the image before the bottom) and clipped to the image."""
    if len(points) < 2 or points[-1, 1] >= bottom:
        return points
    (x0, y0), (x1, y1) = points[-2], points[-1]
    x = x1 + (x1 - x0) * (bottom - y1) / max(y1 - y0, 1e-6)
    return np.vstack([points, [[float(np.clip(x, 0, width - 1)), bottom]]])


def lane_bottom_x(points: np.ndarray, bottom: float) -> float:
    """Where a lane's least-squares line meets the bottom row: the order of lanes left to right."""
    if len(points) == 1:
        return float(points[0, 0])
    k, c = np.polyfit(points[:, 1], points[:, 0], 1)
    return float(k * bottom + c)


def derive_drivable_mask(frame: LaneFrame, size: tuple[int, int]) -> np.ndarray:
    """The region between a frame's outermost lanes, as a (H, W) uint8 0/1 mask.

    Outermost = leftmost and rightmost lane by where their least-squares line meets the
    bottom row. The polygon runs down the left lane's labelled points and up the right
    one's, each extended to the bottom row. Fewer than two lanes: an empty mask."""
    width, height = size
    lanes = [p for p in frame.valid_lanes() if len(p) >= 2]
    mask = Image.new("L", (width, height), 0)
    if len(lanes) >= 2:
        bottom = float(height - 1)
        order = np.argsort([lane_bottom_x(p, bottom) for p in lanes])
        left = _bottom_extended(lanes[order[0]], bottom, width)
        right = _bottom_extended(lanes[order[-1]], bottom, width)
        poly = np.vstack([left, right[::-1]])
        ImageDraw.Draw(mask).polygon([tuple(p) for p in poly.tolist()], fill=1)
    return np.asarray(mask, dtype=np.uint8)


def read_drivable_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"), dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read drivable mask ({exc})") from None
    if arr.shape != (size[1], size[0]):
        raise DatasetError(f"{path}: drivable mask is {arr.shape[1]}x{arr.shape[0]} but its "
                           f"image is {size[0]}x{size[1]}")
    return (arr > 0).astype(np.uint8)


def drivable_mask(root: Path, frame: LaneFrame, size: tuple[int, int], use_file: bool = True
                  ) -> tuple[np.ndarray, str]:
    """(mask, source): the mask file where present and wanted ("file"), else derived ("derived")."""
    path = mask_path(root, frame.raw_file)
    if use_file and path.is_file():
        return read_drivable_mask(path, size), "file"
    return derive_drivable_mask(frame, size), "derived"


def drivable_sources(root: Path, frames: list[LaneFrame]) -> dict[str, int]:
    """How many frames have a mask file and how many get a derived mask."""
    with_file = sum(mask_path(root, f.raw_file).is_file() for f in frames)
    return {"file": with_file, "derived": len(frames) - with_file}
