"""Drawers for `harness show`: COCO results (2D boxes) and TuSimple (lanes, drivable masks),
plus the figure grid every drawer uses. Ground truth is drawn in green, predictions in red."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import DatasetError

if TYPE_CHECKING:
    from harness.show import ShowContext

GT, PRED = "#1db954", "#e8364f"
ABSENT = -2  # TuSimple: no lane point at this row


def grid(samples: int, panels: int, panel_in: tuple[float, float] = (4.0, 3.0),
         per_row: int | None = None) -> tuple[Any, list[list[Any]]]:
    """A figure with `panels` axes per sample, samples laid `per_row` to a row."""
    import matplotlib.pyplot as plt

    per_row = per_row or max(1, min(samples, 4 // panels))
    rows = math.ceil(samples / per_row)
    cols = per_row * panels
    fig, axes = plt.subplots(rows, cols, figsize=(panel_in[0] * cols, panel_in[1] * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    out = []
    for i in range(samples):
        r, c = divmod(i, per_row)
        out.append([axes[r][c * panels + k] for k in range(panels)])
    return fig, out


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the image ({exc})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc})") from None


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not readable JSON lines ({exc})") from None


# ----------------------------------------------------------------------------- COCO
def _box(ax: Any, xywh: list[float], colour: str, label: str, dashed: bool = False) -> None:
    from matplotlib.patches import Rectangle

    x, y, w, h = xywh
    ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=1.5,
                           linestyle="--" if dashed else "-"))
    ax.text(x, y, label, color="white", fontsize=7, va="bottom",
            bbox={"facecolor": colour, "alpha": 0.7, "pad": 1, "edgecolor": "none"})


def draw_coco(ctx: ShowContext) -> tuple[Any, int]:
    """Per image: the ground-truth boxes | the predicted boxes scoring >= score_thr."""
    ann_path = Path(str(ctx.info["ground_truth"]))
    gt = read_json(ann_path)
    results = read_json(ctx.path)
    if not isinstance(results, list):
        raise DatasetError(f"{ctx.path}: a COCO results file is a JSON list of detections")
    # instances_val2017.json -> <root>/val2017/<file_name>: the layout the COCO reader uses.
    image_dir = ann_path.parent.parent / ann_path.stem.split("_", 1)[-1]
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt.get("categories", [])}
    images = sorted(gt.get("images", []), key=lambda im: im["id"])[: ctx.n]
    if not images:
        raise DatasetError(f"{ann_path}: no images")
    fig, axes = grid(len(images), 2)
    for im, (ax_gt, ax_pred) in zip(images, axes):
        pixels = load_image(image_dir / im["file_name"])
        anns = [a for a in gt.get("annotations", []) if a["image_id"] == im["id"]]
        dets = sorted((d for d in results if d["image_id"] == im["id"]
                       and d["score"] >= ctx.score_thr), key=lambda d: -d["score"])[:50]
        top = max((d["score"] for d in results if d["image_id"] == im["id"]), default=0.0)
        for ax, title in ((ax_gt, f"GT: {len(anns)} boxes"),
                          (ax_pred, f"pred: {len(dets)} boxes (max score {top:.2f})")):
            ax.imshow(pixels)
            ax.set_title(f"image {im['id']}  {title}", fontsize=9)
        for a in anns:
            _box(ax_gt, a["bbox"], GT, names.get(a["category_id"], str(a["category_id"])))
        for d in dets:
            name = names.get(d["category_id"], str(d["category_id"]))
            _box(ax_pred, d["bbox"], PRED, f"{name} {d['score']:.2f}", dashed=True)
    fig.suptitle(f"{ctx.record.get('workload')} {ctx.run_dir.name}: ground truth (left) | "
                 f"predictions >= {ctx.score_thr:g} (right)")
    fig.tight_layout()
    return fig, len(images)


# ----------------------------------------------------------------------------- TuSimple
def _lanes(ax: Any, lanes: list[list[float]], h_samples: list[float], colour: str) -> None:
    for xs in lanes:
        pts = [(x, y) for x, y in zip(xs, h_samples) if x != ABSENT and x >= 0]
        if len(pts) >= 2:
            arr = np.asarray(pts)
            ax.plot(arr[:, 0], arr[:, 1], "-o", color=colour, markersize=2, linewidth=2)


def _mask_overlay(ax: Any, path: Path, colour: str) -> bool:
    if not path.is_file():
        return False
    from matplotlib.colors import to_rgb

    mask = load_image(path)[..., 0] > 127
    rgba = np.zeros((*mask.shape, 4))
    rgba[mask] = (*to_rgb(colour), 0.35)
    ax.imshow(rgba)
    return True


def draw_tusimple(ctx: ShowContext) -> tuple[Any, int]:
    """Per frame: GT lanes (+ the drivable mask file where the dataset has one) | predicted
    lanes + the predicted drivable mask (<predictions>/drivable/<raw_file>.png)."""
    label_path = Path(str(ctx.info["ground_truth"]))
    root = label_path.parent
    gt = {f["raw_file"]: f for f in read_json_lines(label_path)}
    preds = read_json_lines(ctx.path)[: ctx.n]
    if not preds:
        raise DatasetError(f"{ctx.path}: no predictions")
    mask_dir = ctx.resolve(str(ctx.info.get("masks") or ctx.path.parent / "drivable"))
    fig, axes = grid(len(preds), 2, panel_in=(4.0, 2.4))
    for p, (ax_gt, ax_pred) in zip(preds, axes):
        frame = gt.get(p["raw_file"])
        if frame is None:
            raise DatasetError(f"{ctx.path}: raw_file {p['raw_file']!r} is not in {label_path}")
        pixels = load_image(root / p["raw_file"])
        rel_mask = Path(p["raw_file"]).with_suffix(".png")
        for ax in (ax_gt, ax_pred):
            ax.imshow(pixels)
        gt_mask = _mask_overlay(ax_gt, root / "drivable" / rel_mask, GT)
        pred_mask = _mask_overlay(ax_pred, mask_dir / rel_mask, PRED)
        _lanes(ax_gt, frame["lanes"], frame["h_samples"], GT)
        _lanes(ax_pred, p["lanes"], frame["h_samples"], PRED)
        ax_gt.set_title(f"GT: {len(frame['lanes'])} lanes" + (" + drivable" if gt_mask else ""),
                        fontsize=9)
        ax_pred.set_title(f"pred: {len(p['lanes'])} lanes" + (" + drivable" if pred_mask else ""),
                          fontsize=9)
        ax_gt.text(2, 2, p["raw_file"], color="white", fontsize=6, va="top")
    fig.suptitle(f"{ctx.record.get('workload')} {ctx.run_dir.name}: ground truth (left) | "
                 "predictions (right)")
    fig.tight_layout()
    return fig, len(preds)
