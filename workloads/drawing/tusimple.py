"""`harness show` for TuSimple lane predictions (lanes): lanes at the label rows, and the
drivable masks where the dataset and the predictions have them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DatasetError
from harness.show_context import ShowContext
from workloads.drawing.figure import GT, PRED, grid, load_image, read_json_lines

ABSENT = -2  # TuSimple: no lane point at this row


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
    fig.suptitle(f"{ctx.record.workload} {ctx.run_dir.name}: ground truth (left) | "
                 "predictions (right)")
    fig.tight_layout()
    return fig, len(preds)
