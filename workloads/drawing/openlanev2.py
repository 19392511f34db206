"""`harness show` for OpenLane-V2 submissions (openlanev2): lane centerlines in the BEV with
their lane-lane topology, traffic elements on the front camera, and the lane-to-element links
(a lane linked to element k is labelled Tk at its middle, element k carries Tk)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DatasetError
from harness.show_context import ShowContext, restricted_pickle_load
from workloads.drawing.figure import GT, PRED, grid, load_image

TOPOLOGY = "#2f6fde"
EDGE_THR = 0.5  # a predicted adjacency probability counts as an edge from here
FRONT = "ring_front_center"


def _bev_xy(points: np.ndarray) -> np.ndarray:
    """Ego (x forward, y left) -> plot (right, up): forward points up the panel."""
    pts = np.asarray(points, dtype=float)
    return np.stack([-pts[:, 1], pts[:, 0]], axis=1)


def _lanes(ax: Any, lanes: list[dict[str, Any]], lclc: np.ndarray, lcte: np.ndarray,
           colour: str) -> None:
    mids = []
    for lane in lanes:
        xy = _bev_xy(lane["points"])
        ax.plot(xy[:, 0], xy[:, 1], color=colour, linewidth=1.5)
        if len(xy) >= 2:  # travel direction at the lane's end
            ax.annotate("", xy=xy[-1], xytext=xy[-2],
                        arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.2})
        mids.append(xy[len(xy) // 2])
    for i, j in zip(*np.nonzero(lclc)):
        if i != j:
            ax.plot([mids[i][0], mids[j][0]], [mids[i][1], mids[j][1]], ":", color=TOPOLOGY,
                    linewidth=1)
    for i in range(len(lanes)):
        linked: list[int] = np.nonzero(lcte[i])[0].tolist() if lcte.size else []
        if linked:
            ax.text(mids[i][0], mids[i][1], ",".join(f"T{k}" for k in linked), fontsize=6,
                    color=TOPOLOGY)
    ax.set_xlim(-25, 25)
    ax.set_ylim(-50, 50)
    ax.set_aspect("equal")
    ax.axis("on")
    ax.tick_params(labelsize=6)


def _elements(ax: Any, elements: list[dict[str, Any]], colour: str, dashed: bool, tag: str) -> None:
    from matplotlib.patches import Rectangle

    for k, te in enumerate(elements):
        (x1, y1), (x2, y2) = np.asarray(te["points"], dtype=float)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                               linewidth=1.2, linestyle="--" if dashed else "-"))
        ax.text(x1, y1, f"{tag}T{k} a{te['attribute']}", color=colour, fontsize=6, va="bottom")


def _matrix(value: Any, rows: int, cols: int) -> np.ndarray:
    m = np.asarray(value if value is not None else np.zeros((rows, cols)), dtype=float)
    return m.reshape(rows, cols) if m.size == rows * cols else np.zeros((rows, cols))


def draw_openlanev2(ctx: ShowContext) -> tuple[Any, int]:
    """Per frame: GT centerlines + topology | predicted ones (confidence >= score_thr, edges
    with probability >= 0.5) | the front camera with GT and predicted traffic elements."""
    gt_path = Path(str(ctx.info["ground_truth"]))
    gt = restricted_pickle_load(gt_path)
    sub = restricted_pickle_load(ctx.path)
    results = sub.get("results") if isinstance(sub, dict) else None
    if not isinstance(results, dict) or not results:
        raise DatasetError(f"{ctx.path}: an OpenLane-V2 submission has a non-empty 'results' dict")
    keys = [k for k in results if k in gt][: ctx.n]
    if not keys:
        raise DatasetError(f"{ctx.path}: none of its frames is in the ground truth {gt_path}")
    root = ctx.data_root
    fig, axes = grid(len(keys), 3, panel_in=(3.2, 4.2), per_row=1)
    for key, (ax_gt, ax_pred, ax_img) in zip(keys, axes):
        ann = gt[key]["annotation"]
        g_lanes, g_te = ann["lane_centerline"], ann["traffic_element"]
        _lanes(ax_gt, g_lanes, _matrix(ann["topology_lclc"], len(g_lanes), len(g_lanes)),
               _matrix(ann["topology_lcte"], len(g_lanes), len(g_te)), GT)
        pred = results[key]["predictions"]
        keep_l = [i for i, lane in enumerate(pred["lane_centerline"])
                  if lane["confidence"] >= ctx.score_thr]
        keep_t = [i for i, te in enumerate(pred["traffic_element"]) if te["confidence"] >= ctx.score_thr]
        n_l, n_t = len(pred["lane_centerline"]), len(pred["traffic_element"])
        lclc = _matrix(pred["topology_lclc"], n_l, n_l)[np.ix_(keep_l, keep_l)] >= EDGE_THR
        lcte = _matrix(pred["topology_lcte"], n_l, n_t)[np.ix_(keep_l, keep_t)] >= EDGE_THR
        p_lanes = [pred["lane_centerline"][i] for i in keep_l]
        p_te = [pred["traffic_element"][i] for i in keep_t]
        _lanes(ax_pred, p_lanes, lclc, lcte, PRED)
        ax_gt.set_title(f"{key[1]}/{key[2]}: GT {len(g_lanes)} lanes, "
                        f"{int(np.count_nonzero(_matrix(ann['topology_lclc'], len(g_lanes), len(g_lanes))))} edges",
                        fontsize=7)
        top = max((lane["confidence"] for lane in pred["lane_centerline"]), default=0.0)
        ax_pred.set_title(f"pred {len(p_lanes)} lanes >= {ctx.score_thr:g} (max {top:.2f}), "
                          f"{int(np.count_nonzero(lclc))} edges", fontsize=7)
        image = gt[key].get("sensor", {}).get(FRONT, {}).get("image_path")
        if root is not None and image and (root / image).is_file():
            ax_img.imshow(load_image(root / image))
        _elements(ax_img, g_te, GT, dashed=False, tag="")
        _elements(ax_img, p_te, PRED, dashed=True, tag="p")
        ax_img.set_title(f"{FRONT}: GT {len(g_te)} / pred {len(p_te)} elements", fontsize=7)
    fig.suptitle(f"{ctx.record.workload} {ctx.run_dir.name}: ground truth (green), "
                 f"predictions (red), topology (blue: lane-lane edges, Tk: lane-element links)",
                 fontsize=9)
    fig.tight_layout()
    return fig, len(keys)
