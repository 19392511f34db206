"""COCO reader and synthetic writer: round trip, id mapping, image modes, malformed input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from harness.errors import DatasetError
from workloads.datasets.coco import (
    CocoDetection,
    SyntheticSpec,
    annotation_file,
    collate,
    letterbox,
    synthetic_category_ids,
    write_synthetic_coco,
)

SPEC = SyntheticSpec(num_classes=4, train_images=40, val_images=10, seed=3)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_coco(tmp_path_factory.mktemp("cache"), SPEC)


def test_synthetic_reads_back_with_expected_counts(synth_root: Path) -> None:
    for split, count in (("train", SPEC.train_images), ("val", SPEC.val_images)):
        raw = json.loads(annotation_file(synth_root, split).read_text())
        ds = CocoDetection(synth_root, split, input_size=128)
        assert len(ds) == len(raw["images"]) == count
        plain = [a for a in raw["annotations"] if not a["iscrowd"]]
        assert sum(len(ds[i]["labels"]) for i in range(len(ds))) == len(plain)
    assert any(a["iscrowd"] for a in json.loads(annotation_file(synth_root, "train").read_text())["annotations"])


def test_noncontiguous_category_ids_map_to_contiguous_labels(synth_root: Path) -> None:
    ds = CocoDetection(synth_root, "train", input_size=128)
    assert ds.cat_ids == synthetic_category_ids(4) == [1, 3, 6, 10]
    assert ds.num_classes == 4
    raw = json.loads(annotation_file(synth_root, "train").read_text())
    by_image: dict[int, list[int]] = {}
    for a in raw["annotations"]:
        if not a["iscrowd"]:
            by_image.setdefault(a["image_id"], []).append(ds.cat_ids.index(a["category_id"]))
    for i in range(len(ds)):
        item = ds[i]
        assert item["labels"].tolist() == by_image.get(item["meta"]["image_id"], [])
    seen = {lb for labels in by_image.values() for lb in labels}
    assert seen == {0, 1, 2, 3}


def test_grayscale_images_load_as_three_channels(synth_root: Path) -> None:
    ds = CocoDetection(synth_root, "train", input_size=128)
    gray = [i for i, im in enumerate(ds.images) if Image.open(ds.image_dir / im["file_name"]).mode == "L"]
    assert gray, "the writer should produce some grayscale images"
    item = ds[gray[0]]
    assert item["image"].shape == (3, 128, 128) and item["image"].dtype == torch.uint8


def test_letterbox_keeps_scale_and_boxes(tmp_path: Path) -> None:
    img = Image.fromarray(np.full((100, 200, 4), 200, dtype=np.uint8), mode="RGBA").convert("RGB")
    tensor, (sx, sy) = letterbox(img, 160)
    assert tensor.shape == (3, 160, 160)
    assert (sx, sy) == (0.8, 0.8)
    assert tensor[:, 80:, :].sum() == 0  # padding below the 80-px-high content


def test_writer_is_deterministic_and_cached(tmp_path: Path, synth_root: Path) -> None:
    again = write_synthetic_coco(tmp_path, SPEC)
    for split in ("train", "val"):
        assert annotation_file(again, split).read_bytes() == annotation_file(synth_root, split).read_bytes()
    stamp = annotation_file(again, "train").stat().st_mtime_ns
    assert write_synthetic_coco(tmp_path, SPEC) == again
    assert annotation_file(again, "train").stat().st_mtime_ns == stamp  # not regenerated
    assert [p.name for p in tmp_path.iterdir()] == [again.name]  # no temp folders left


def test_collate_keeps_meta_as_python_objects(synth_root: Path) -> None:
    ds = CocoDetection(synth_root, "val", input_size=96)
    batch = collate([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 96, 96)
    assert isinstance(batch["boxes"], list) and isinstance(batch["meta"][0]["image_id"], int)


# ---------------------------------------------------------------- malformed input
def _corrupt(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = annotation_file(root, "train")
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return apply


def _first_plain(data: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in data["annotations"] if not a["iscrowd"])


def _remove_image(root: Path) -> None:
    data = json.loads(annotation_file(root, "train").read_text())
    (root / "train2017" / data["images"][2]["file_name"]).unlink()


CASES = {
    "missing_annotations": (_corrupt(lambda d: d.pop("annotations")), "annotations"),
    "bbox_three_numbers": (_corrupt(lambda d: _first_plain(d).update(bbox=[1, 2, 3])), "bbox"),
    "bbox_not_numbers": (_corrupt(lambda d: _first_plain(d).update(bbox=["a", 2, 3, 4])), "bbox"),
    "unknown_image_id": (_corrupt(lambda d: _first_plain(d).update(image_id=987654)), "image_id"),
    "unknown_category_id": (_corrupt(lambda d: _first_plain(d).update(category_id=2)), "category_id"),
    "image_without_file_name": (_corrupt(lambda d: d["images"][0].pop("file_name")), "file_name"),
    "missing_image_file": (_remove_image, "file_name"),
    "duplicate_image_id": (_corrupt(lambda d: d["images"][1].update(id=d["images"][0]["id"])), "].id"),
    "unreadable_json": (lambda r: annotation_file(r, "train").write_text("{not json"), "JSON"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_raises_dataset_error_naming_file_and_field(
        case: str, synth_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    shutil.copytree(synth_root, root)
    corrupt, field = CASES[case]
    corrupt(root)
    with pytest.raises(DatasetError) as info:
        CocoDetection(root, "train", input_size=128)
    message = str(info.value)
    assert str(annotation_file(root, "train")) in message
    assert field in message
