"""`harness show` for COCO results files (yolov3): 2D boxes, ground truth | predictions."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import DatasetError
from harness.show_context import ShowContext
from workloads.drawing.figure import GT, PRED, grid, load_image, read_json


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
    fig.suptitle(f"{ctx.record.workload} {ctx.run_dir.name}: ground truth (left) | "
                 f"predictions >= {ctx.score_thr:g} (right)")
    fig.tight_layout()
    return fig, len(images)
