"""COCO detection: a reader for the standard layout and a synthetic writer producing it.

Layout: ROOT/annotations/instances_{train,val}2017.json, images in ROOT/{train,val}2017/.
The reader validates the json up front (a DatasetError names the file and the field),
maps category ids (sparse in COCO: 1..90) to contiguous labels in id order, drops iscrowd
boxes from training targets (COCOeval still sees them, as ignore regions), and letterboxes
every image to a square input: resize keeping the aspect ratio, pad right/bottom with 0,
and keep the per-axis scale so predictions map back to original pixels.
"""
from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import math
import numbers
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from harness.errors import DatasetError
from workloads.datasets.cache import write_once

SPLITS = ("train", "val")


def annotation_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def _need(obj: Any, key: str, where: str, path: Path, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(f"{path}: {where} is missing the '{key}' field")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{path}: {where}.{key} has the wrong type ({type(value).__name__})")
    return value


def load_instances(path: Path) -> dict[str, Any]:
    """Read and validate an instances json; fill `area`/`iscrowd` where absent (COCOeval
    needs both). Returns the json dict."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be an object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        _need(data, key, "top level", path, list)
    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        image_id = _need(img, "id", f"images[{i}]", path, int)
        if image_id in image_ids:
            raise DatasetError(f"{path}: images[{i}].id {image_id} is a duplicate")
        image_ids.add(image_id)
        _need(img, "file_name", f"images[{i}]", path, str)
    if not image_ids:
        raise DatasetError(f"{path}: images is empty (an empty split has nothing to train on "
                           f"or evaluate)")
    cat_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        cat_ids.add(_need(cat, "id", f"categories[{i}]", path, int))
    if not cat_ids:
        raise DatasetError(f"{path}: categories is empty")
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        _need(ann, "id", where, path, int)
        if _need(ann, "image_id", where, path, int) not in image_ids:
            raise DatasetError(f"{path}: {where}.image_id {ann['image_id']} is not in images")
        if _need(ann, "category_id", where, path, int) not in cat_ids:
            raise DatasetError(f"{path}: {where}.category_id {ann['category_id']} is not in categories")
        bbox = _need(ann, "bbox", where, path, list)
        if len(bbox) != 4 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bbox):
            raise DatasetError(f"{path}: {where}.bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
        if not all(math.isfinite(v) for v in bbox):  # json reads NaN/Infinity as floats
            raise DatasetError(f"{path}: {where}.bbox has a non-finite number: {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DatasetError(f"{path}: {where}.bbox has a negative width or height: {bbox!r}")
        ann.setdefault("area", float(bbox[2] * bbox[3]))
        ann.setdefault("iscrowd", 0)
    return data


def letterbox(img: Image.Image, size: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """RGB PIL image -> (3, size, size) uint8 tensor and the (x, y) scale applied."""
    w, h = img.size
    ratio = size / max(w, h)
    nw, nh = max(1, round(w * ratio)), max(1, round(h * ratio))
    resized = np.asarray(img.resize((nw, nh), Image.BILINEAR), dtype=np.uint8)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:nh, :nw] = resized
    return torch.from_numpy(canvas).permute(2, 0, 1).contiguous(), (nw / w, nh / h)


class CocoDetection(torch.utils.data.Dataset):
    """One split. Items: dict(image uint8 (3,S,S), boxes (n,4) xyxy in input pixels,
    labels (n,) contiguous, meta{image_id, orig_size (w,h), scale (sx,sy), file})."""

    def __init__(self, root: Path, split: str, input_size: int, flip_prob: float = 0.0,
                 transform: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None) -> None:
        """`transform(rng, image HWC, boxes, labels) -> (image CHW float, boxes, labels)`
        replaces flip + letterbox (a training pipeline such as mmdet's YOLOv3 one)."""
        self.root, self.split, self.input_size, self.flip_prob = Path(root), split, input_size, flip_prob
        self.transform = transform
        self.ann_path = annotation_file(self.root, split)
        self.instances = load_instances(self.ann_path)
        cats = sorted(self.instances["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [c["id"] for c in cats]
        self.cat_names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        self.cat_to_label = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.images = sorted(self.instances["images"], key=lambda im: im["id"])
        self.image_dir = self.root / f"{split}2017"
        for img in self.images:
            if not (self.image_dir / img["file_name"]).is_file():
                raise DatasetError(f"{self.ann_path}: images[id={img['id']}].file_name "
                                   f"{img['file_name']!r}: no such file in {self.image_dir}")
        self.targets: dict[int, list[tuple[list[float], int]]] = {im["id"]: [] for im in self.images}
        for ann in self.instances["annotations"]:
            x, y, w, h = ann["bbox"]
            if ann["iscrowd"] or w < 1 or h < 1:  # crowd regions and degenerate boxes: no target
                continue
            self.targets[ann["image_id"]].append(([x, y, x + w, y + h], self.cat_to_label[ann["category_id"]]))

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def most_boxes(self) -> tuple[int, dict[str, Any]]:
        """The largest number of training targets on one image, and that image's entry."""
        if not self.images:
            return 0, {}
        image = max(self.images, key=lambda im: len(self.targets[im["id"]]))
        return len(self.targets[image["id"]]), image

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> Image.Image:
        path = self.image_dir / self.images[index]["file_name"]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")  # grayscale, palette, RGBA, CMYK -> 3 channels
        except OSError as exc:
            raise DatasetError(f"{path}: cannot decode image ({exc})") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        info = self.images[index]
        img = self.load_image(index)
        w, h = img.size
        objs = self.targets[info["id"]]
        boxes = torch.tensor([b for b, _ in objs], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([lb for _, lb in objs], dtype=torch.long)
        if self.transform is not None:
            # Drawn from torch's RNG: seeded by the harness, distinct per DataLoader worker.
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            arr, bxs, lbs = self.transform(rng, np.asarray(img), boxes.numpy(), labels.numpy())
            meta = {"image_id": info["id"], "orig_size": (w, h), "scale": (1.0, 1.0), "file": info["file_name"]}
            return {"image": torch.from_numpy(arr), "boxes": torch.from_numpy(bxs).reshape(-1, 4),
                    "labels": torch.from_numpy(np.asarray(lbs, dtype=np.int64)), "meta": meta}
        if self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        image, (sx, sy) = self.resize(img)
        boxes = boxes * torch.tensor([sx, sy, sx, sy])
        meta = {"image_id": info["id"], "orig_size": (w, h), "scale": (sx, sy), "file": info["file_name"]}
        return {"image": image, "boxes": boxes, "labels": labels, "meta": meta}

    def resize(self, img: Image.Image) -> tuple[torch.Tensor, tuple[float, float]]:
        """The image as the network takes it (uint8 (3, H', W')) and the per-axis scale from
        the file's pixels: a square letterbox of `input_size` here."""
        return letterbox(img, self.input_size)


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images (padded right/bottom with 0 to the largest when sizes differ, as mmdet's
    collate); keep per-image boxes/labels as lists (ragged) and meta as plain dicts."""
    images = [s["image"] for s in samples]
    if len({tuple(i.shape) for i in images}) > 1:
        h, w = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
        images = [torch.nn.functional.pad(i, (0, w - i.shape[2], 0, h - i.shape[1])) for i in images]
    return {
        "images": torch.stack(images),
        "boxes": [s["boxes"] for s in samples],
        "labels": [s["labels"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }


# --------------------------------------------------------------------------- synthetic
SYNTH_VERSION = 1
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
MARKER = "synthetic.json"


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """What the synthetic writer draws. The class of an object is its shape and its colour
    (both learnable; grayscale images keep only the shape)."""

    num_classes: int = 4
    train_images: int = 320
    val_images: int = 100
    min_side: int = 96  # image width and height are drawn from [min_side, max_side]
    max_side: int = 224
    max_objects: int = 4
    seed: int = 0
    # Category ids to write (len == num_classes); () = synthetic_category_ids(num_classes).
    category_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.category_ids and len(self.category_ids) != self.num_classes:
            raise ValueError(f"category_ids {self.category_ids} must have num_classes={self.num_classes} entries")

    def identity(self) -> dict[str, Any]:
        """What the marker and folder name hash; the default ids are left out so caches
        written before the field existed stay valid."""
        out = {**dataclasses.asdict(self), "version": SYNTH_VERSION}
        if not self.category_ids:
            del out["category_ids"]
        else:
            out["category_ids"] = list(self.category_ids)
        return out

    def ids(self) -> list[int]:
        return list(self.category_ids) or synthetic_category_ids(self.num_classes)

    def dirname(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True)
        return f"coco-synth-c{self.num_classes}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def synthetic_category_ids(n: int) -> list[int]:
    """Sparse ids 1, 3, 6, 10, 12, ... so the reader's id -> label mapping is exercised."""
    ids, cid = [], 1
    for k in range(n):
        ids.append(cid)
        cid += 2 + k % 3
    return ids


def class_style(k: int) -> tuple[str, tuple[int, int, int]]:
    shape = SHAPES[k % len(SHAPES)]
    # Golden-ratio hue steps keep the first few classes' colours far apart.
    hue = ((k + k // len(SHAPES)) * 0.618034) % 1.0
    return shape, tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))  # type: ignore[return-value]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[int], colour: tuple[int, ...]) -> None:
    x1, y1, x2, y2 = box[0], box[1], box[2] - 1, box[3] - 1  # pixels x1..x2 inclusive
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    if shape == "circle":
        draw.ellipse((x1, y1, x2, y2), fill=colour)
    elif shape == "square":
        draw.rectangle((x1, y1, x2, y2), fill=colour)
    elif shape == "triangle":
        draw.polygon([(x1, y2), (x2, y2), (cx, y1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=colour)
    elif shape == "cross":
        draw.rectangle((x1, cy - h / 6, x2, cy + h / 6), fill=colour)
        draw.rectangle((cx - w / 6, y1, cx + w / 6, y2), fill=colour)
    else:  # ring
        draw.ellipse((x1, y1, x2, y2), outline=colour, width=max(2, int(min(w, h) / 5)))


def _free_box(rng: np.random.Generator, w: int, h: int, ow: int, oh: int,
              placed: list[list[int]]) -> list[int] | None:
    for _ in range(30):
        x, y = int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1))
        box = [x, y, x + ow, y + oh]
        if all(box[2] + 2 <= p[0] or p[2] + 2 <= box[0] or box[3] + 2 <= p[1] or p[3] + 2 <= box[1]
               for p in placed):
            return box
    return None


def _render(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[Image.Image, list[tuple[list[int], int, int]]]:
    w, h = (int(v) for v in rng.integers(spec.min_side, spec.max_side + 1, size=2))
    # Textured background: a smooth low-saturation colour field, a few grey strokes, noise.
    field = rng.uniform(50, 200, size=(3, 3, 3))
    field = 0.4 * field + 0.6 * field.mean(-1, keepdims=True)
    img = Image.fromarray(field.astype(np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):
        g = int(rng.integers(60, 200))
        draw.line([tuple(int(v) for v in rng.integers(0, (w, h))) for _ in range(2)], fill=(g, g, g), width=2)
    objects: list[tuple[list[int], int, int]] = []  # (xyxy, class, iscrowd)
    placed: list[list[int]] = []
    n = 0 if rng.random() < 0.04 else int(rng.integers(1, spec.max_objects + 1))
    for _ in range(n):
        k = int(rng.integers(spec.num_classes))
        side = rng.uniform(0.15, 0.5) * min(w, h)
        aspect = rng.uniform(0.75, 1.33)
        ow, oh = max(8, int(side * aspect ** 0.5)), max(8, int(side / aspect ** 0.5))
        box = _free_box(rng, w, h, ow, oh, placed)
        if box is None:
            continue
        shape, colour = class_style(k)
        jitter = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
        _draw_shape(draw, shape, box, jitter)
        placed.append(box)
        objects.append((box, k, 0))
    if rng.random() < 0.06:  # a crowd: a tight cluster of small same-class shapes
        region = _free_box(rng, w, h, int(0.35 * min(w, h)), int(0.25 * min(w, h)), placed)
        if region is not None:
            k = int(rng.integers(spec.num_classes))
            shape, colour = class_style(k)
            rw, rh = region[2] - region[0], region[3] - region[1]
            for i in range(4):
                sx, sy = region[0] + (i % 2) * rw // 2, region[1] + (i // 2) * rh // 2
                _draw_shape(draw, shape, [sx, sy, sx + rw // 2 - 1, sy + rh // 2 - 1], colour)
            objects.append((region, k, 1))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 8, size=(h, w, 3))
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.12:
        out = out.convert("L")
    return out, objects


def _write_split(root: Path, split: str, count: int, spec: SyntheticSpec, cat_ids: list[int]) -> None:
    (root / f"{split}2017").mkdir(parents=True)
    images, anns = [], []
    base = 1 if split == "train" else 1_000_001
    for i in range(count):
        rng = np.random.default_rng([spec.seed, SPLITS.index(split), i])
        img, objects = _render(rng, spec)
        image_id, name = base + i, f"{base + i:012d}.jpg"
        img.save(root / f"{split}2017" / name, quality=92)
        images.append({"id": image_id, "file_name": name, "width": img.width, "height": img.height})
        for (x1, y1, x2, y2), k, crowd in objects:
            anns.append({"id": len(anns) + 1 + base * 10, "image_id": image_id, "category_id": cat_ids[k],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float((x2 - x1) * (y2 - y1)),
                         "iscrowd": crowd, "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
    cats = [{"id": cid, "name": f"{class_style(k)[0]}_{k}", "supercategory": "shape"}
            for k, cid in enumerate(cat_ids)]
    with open(annotation_file(root, split), "w", encoding="utf-8") as f:
        json.dump({"info": {"description": "perception-harness synthetic COCO"},
                   "images": images, "annotations": anns, "categories": cats}, f)


def write_synthetic_coco(cache_dir: Path, spec: SyntheticSpec) -> Path:
    """Write (once) a synthetic COCO-layout dataset under cache_dir and return its root.

    Reuses a finished copy whose marker matches `spec`; otherwise writes into a temporary
    folder and renames it into place, so an interrupted or concurrent write never leaves a
    half-written dataset where the reader would take it for a complete one."""
    def fill(tmp: Path) -> None:
        (tmp / "annotations").mkdir()
        cat_ids = spec.ids()
        _write_split(tmp, "train", spec.train_images, spec, cat_ids)
        _write_split(tmp, "val", spec.val_images, spec, cat_ids)

    return write_once(cache_dir, spec.dirname(), spec.identity(), fill, marker=MARKER)


def to_coco_results(detections: Sequence[dict[str, Any]], label_to_cat: Sequence[int]
                    ) -> list[dict[str, Any]]:
    """Per-image xyxy detections with contiguous labels -> COCO result dicts (xywh, cat id)."""
    results = []
    for det in detections:
        for (x1, y1, x2, y2), score, label in zip(det["bboxes"], det["scores"], det["labels"]):
            results.append({
                "image_id": int(det["image_id"]),
                "category_id": int(label_to_cat[int(label)]),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(score),
            })
    return results
