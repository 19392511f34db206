"""Synthetic road scenes written in the TuSimple layout (see workloads/datasets/tusimple.py).

Each frame is a perspective road: sky above a horizon, textured terrain, an asphalt road
between the outermost lane markings, and 2-5 solid or dashed markings converging to a
vanishing point with a shared curvature. Labels are the markings' centre lines sampled at
TuSimple's h_samples (160..710 or 240..710 in 10-px steps, scaled to the image height),
-2 where a marking is above its start or outside the image. The drivable mask file (the
asphalt) is written to ROOT/drivable/ unless `with_masks` is False. Only the labelled 20th
frame of each clip is written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from workloads.datasets.cache import write_once
from workloads.datasets.tusimple import MASK_DIR, TEST_LABEL

MARKER = ".complete.json"
TRAIN_FILES = ("label_data_0313.json", "label_data_0601.json")
TRAIN_DATES = ("0313-1", "0601")
TEST_DATE = "0530"


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    train_frames: int = 160
    test_frames: int = 40
    image_size: tuple[int, int] = (1280, 720)  # (width, height), TuSimple's
    seed: int = 0
    with_masks: bool = True

    def identity(self) -> dict:
        # through JSON, so it compares equal to the marker read back (tuples become lists)
        return json.loads(json.dumps({"format": "tusimple-synth/1", **dataclasses.asdict(self)}))

    def dirname(self) -> str:
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        return f"tusimple-synth-{digest}"


@dataclasses.dataclass
class Scene:
    vx: float  # vanishing point column
    vy: float  # horizon row
    curve: float  # lateral shift of the far road, pixels at the horizon
    bottoms: np.ndarray  # each marking's offset from vx at the bottom row
    starts: np.ndarray  # row where each marking begins (below the horizon)
    dashed: np.ndarray
    colours: list[tuple[int, int, int]]

    def x_at(self, i: int, y: np.ndarray, height: int) -> np.ndarray:
        t = (y - self.vy) / (height - self.vy)
        return self.vx + self.curve * (1 - t) ** 2 + t * self.bottoms[i]


def random_scene(rng: np.random.Generator, width: int, height: int) -> Scene:
    n = int(rng.choice([2, 3, 4, 5], p=[0.15, 0.35, 0.4, 0.1]))
    spacing = rng.uniform(0.33, 0.45) * width
    ego = rng.integers(0, n - 1)  # the ego lane lies between markings ego and ego+1
    shift = rng.uniform(-0.3, 0.3) * spacing
    bottoms = (np.arange(n) - ego - 0.5) * spacing + shift
    vy = rng.uniform(0.36, 0.42) * height
    starts = vy + rng.uniform(0.03, 0.08, size=n) * height
    dashed = rng.random(n) < 0.5
    colours = [(235, 235, 225) if rng.random() < 0.8 else (225, 190, 60) for _ in range(n)]
    return Scene(vx=rng.uniform(0.42, 0.58) * width, vy=vy, curve=rng.uniform(-0.12, 0.12) * width,
                 bottoms=bottoms, starts=starts, dashed=dashed, colours=colours)


def h_samples_for(rng: np.random.Generator, height: int) -> np.ndarray:
    start = 160 if rng.random() < 0.5 else 240  # both occur in TuSimple
    return np.round(np.arange(start, 711, 10) * height / 720.0).astype(np.int64)


def _dense_rows(scene: Scene, i: int, height: int) -> np.ndarray:
    return np.arange(np.ceil(scene.starts[i]), height, 2.0)


def render(scene: Scene, rng: np.random.Generator, width: int, height: int
           ) -> tuple[Image.Image, np.ndarray]:
    """The frame and its drivable mask (asphalt between the outermost markings)."""
    small = rng.normal(0, 1, size=(height // 16 + 1, width // 16 + 1, 1))
    terrain = np.array(rng.choice([(70, 110, 60), (120, 105, 80), (95, 95, 90)]), dtype=np.float64)
    img = np.empty((height, width, 3), np.float32)
    img[:] = terrain
    noise = np.kron(small.astype(np.float32), np.ones((16, 16, 1), np.float32))[:height, :width]
    img += noise * 12 + 6 * rng.standard_normal(size=(height, width, 1), dtype=np.float32)
    sky = np.linspace(1.0, 0.7, int(scene.vy))[:, None, None] * np.array([150, 180, 220])
    img[: int(scene.vy)] = sky
    image = Image.fromarray(np.clip(img * rng.uniform(0.75, 1.2), 0, 255).astype(np.uint8))

    order = np.argsort(scene.bottoms)
    left, right = order[0], order[-1]
    rows_l, rows_r = _dense_rows(scene, left, height), _dense_rows(scene, right, height)
    poly = [(float(x), float(y)) for x, y in zip(scene.x_at(left, rows_l, height), rows_l)]
    poly += [(float(x), float(y)) for x, y in zip(scene.x_at(right, rows_r, height)[::-1], rows_r[::-1])]
    mask_img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask_img).polygon(poly, fill=1)
    mask = np.asarray(mask_img, dtype=np.uint8)
    grey = rng.uniform(70, 110)
    grain = 7 * rng.standard_normal(size=(height, width), dtype=np.float32)
    asphalt = Image.fromarray(np.clip(grey + grain, 0, 255)
                              .astype(np.uint8)).convert("RGB")
    image.paste(asphalt, (0, 0), Image.fromarray(mask * 255))

    draw = ImageDraw.Draw(image)
    scale = width / 1280.0
    for i in range(len(scene.bottoms)):
        rows = _dense_rows(scene, i, height)
        xs = scene.x_at(i, rows, height)
        for k in range(len(rows) - 1):
            t = (rows[k] - scene.vy) / (height - scene.vy)
            if scene.dashed[i] and int(np.sqrt(t) * 14) % 2:
                continue  # dashes shrink with distance (sqrt spacing)
            w = max(1, int(round((3 + 14 * t) * scale)))
            draw.line([(xs[k], rows[k]), (xs[k + 1], rows[k + 1])], fill=scene.colours[i], width=w)
    return image, mask


def labels(scene: Scene, h_samples: np.ndarray, width: int, height: int) -> list[list[int]]:
    """Markings sampled at h_samples, left to right; -2 above the start or outside the image;
    a marking with fewer than 2 visible rows is left out (TuSimple labels none such)."""
    out = []
    for i in np.argsort(scene.bottoms):
        xs = np.round(scene.x_at(i, h_samples.astype(np.float64), height)).astype(np.int64)
        xs[(h_samples < scene.starts[i]) | (xs < 0) | (xs >= width)] = -2
        if (xs >= 0).sum() >= 2:
            out.append(xs.tolist())
    return out


def _write_split(root: Path, name: str, dates: tuple[str, ...], files: tuple[str, ...],
                 frames: int, rng: np.random.Generator, spec: SynthSpec, first_clip: int) -> None:
    width, height = spec.image_size
    per_file = [frames // len(files) + (i < frames % len(files)) for i in range(len(files))]
    clip = first_clip
    for date, fname, count in zip(dates, files, per_file):
        with open(root / fname, "w", encoding="utf-8") as f:
            for _ in range(count):
                scene = random_scene(rng, width, height)
                h = h_samples_for(rng, height)
                raw_file = f"clips/{date}/{clip}/20.jpg"
                clip += 1
                image, mask = render(scene, rng, width, height)
                (root / raw_file).parent.mkdir(parents=True, exist_ok=True)
                image.save(root / raw_file, quality=90)
                if spec.with_masks:
                    mpath = root / MASK_DIR / Path(raw_file).with_suffix(".png")
                    mpath.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask * 255).save(mpath)
                line = {"lanes": labels(scene, h, width, height), "h_samples": h.tolist(),
                        "raw_file": raw_file}
                f.write(json.dumps(line) + "\n")


def write_synthetic_tusimple(cache_dir: Path, spec: SynthSpec = SynthSpec()) -> Path:
    """Write (once) a synthetic TuSimple root under cache_dir and return it; a finished copy
    with the same spec is reused, and writing goes through a temporary folder renamed into
    place so an interrupted or concurrent write never looks complete."""
    def fill(tmp: Path) -> None:
        rng = np.random.default_rng(spec.seed)
        _write_split(tmp, "train", TRAIN_DATES, TRAIN_FILES, spec.train_frames, rng, spec, 1000)
        _write_split(tmp, "test", (TEST_DATE,), (TEST_LABEL,), spec.test_frames, rng, spec, 9000)

    return write_once(cache_dir, spec.dirname(), spec.identity(), fill, marker=MARKER)
