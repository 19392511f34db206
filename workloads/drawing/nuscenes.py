"""`harness show` for nuScenes detection submissions (bevdepth, matrixvt, streampetr): the
boxes in the bird's-eye view around the ego car and projected into the cameras, with
nuscenes-devkit doing the geometry (its Box, poses and calibration tables)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DatasetError, MissingExtra
from harness.show_context import ShowContext
from workloads.drawing.figure import GT, PRED, grid, load_image, read_json

BEV_RANGE_M = 51.2  # BEVDepth's and StreamPETR's detection range
CAMERA_ORDER = ("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT",
                "CAM_BACK_RIGHT")
MAX_CAMERAS = 2


def _devkit() -> tuple[Any, Any, Any, Any]:
    try:
        from nuscenes.nuscenes import NuScenes
        from nuscenes.utils.data_classes import Box
        from nuscenes.utils.geometry_utils import BoxVisibility, box_in_image
    except ImportError:
        raise MissingExtra("showing nuScenes predictions needs nuscenes-devkit: "
                           "pip install 'perception-harness[bevdepth]'") from None
    return NuScenes, Box, BoxVisibility, box_in_image


def _into(box: Any, record: dict[str, Any]) -> Any:
    """The box moved into the frame of a pose or calibrated_sensor record."""
    from pyquaternion import Quaternion

    box.translate(-np.asarray(record["translation"]))
    box.rotate(Quaternion(record["rotation"]).inverse)
    return box


def _cameras(sample: dict[str, Any]) -> list[str]:
    cams = [c for c in CAMERA_ORDER if c in sample["data"]]
    cams += sorted(c for c in sample["data"] if c.startswith("CAM") and c not in cams)
    return cams[:MAX_CAMERAS]


def _bev(ax: Any, boxes: list[Any], colour: str, dashed: bool) -> None:
    for b in boxes:
        corners = b.bottom_corners()[:2].T
        loop = np.vstack([corners, corners[:1]])
        ax.plot(loop[:, 0], loop[:, 1], color=colour, linewidth=1.2, linestyle="--" if dashed else "-")
        front = corners[:2].mean(axis=0)  # the devkit's corners 0, 1 are the front face
        ax.plot([b.center[0], front[0]], [b.center[1], front[1]], color=colour, linewidth=1)


def draw_nuscenes(ctx: ShowContext) -> tuple[Any, int]:
    """Per sample: BEV (ego frame at the LIDAR_TOP timestamp, x forward) with GT and predicted
    boxes | the first cameras (front, back) with both boxes projected."""
    from pyquaternion import Quaternion

    NuScenes, Box, BoxVisibility, box_in_image = _devkit()
    gt = ctx.info.get("ground_truth")
    if not isinstance(gt, dict) or not {"dataroot", "version"} <= set(gt):
        raise DatasetError(f"{ctx.run_dir / 'record.json'}: predictions.ground_truth should name "
                           f"the nuScenes dataroot and version, got {gt!r}")
    nusc = NuScenes(version=gt["version"], dataroot=gt["dataroot"], verbose=False)
    results = read_json(ctx.path).get("results")
    if not isinstance(results, dict) or not results:
        raise DatasetError(f"{ctx.path}: a nuScenes submission has a non-empty 'results' dict")
    tokens = list(results)[: ctx.n]
    first = nusc.get("sample", tokens[0])
    cams = _cameras(first)
    fig, axes = grid(len(tokens), 1 + len(cams), panel_in=(4.5, 4.0), per_row=1)
    for token, panels in zip(tokens, axes):
        try:
            sample = nusc.get("sample", token)
        except KeyError:
            raise DatasetError(f"{ctx.path}: sample_token {token} is not in {gt['dataroot']} "
                               f"{gt['version']}") from None
        gt_boxes = [nusc.get_box(a) for a in sample["anns"]]
        preds = [Box(r["translation"], r["size"], Quaternion(r["rotation"]),
                     name=r["detection_name"], score=r["detection_score"])
                 for r in results[token] if r["detection_score"] >= ctx.score_thr]
        ref = sample["data"].get("LIDAR_TOP") or sample["data"][cams[0]]
        pose = nusc.get("ego_pose", nusc.get("sample_data", ref)["ego_pose_token"])
        ax = panels[0]
        ax.axis("on")
        _bev(ax, [_into(b.copy(), pose) for b in gt_boxes], GT, dashed=False)
        _bev(ax, [_into(b.copy(), pose) for b in preds], PRED, dashed=True)
        ax.plot([0], [0], marker=(3, 0, -90), color="black", markersize=10)
        ax.set_xlim(-BEV_RANGE_M, BEV_RANGE_M)
        ax.set_ylim(-BEV_RANGE_M, BEV_RANGE_M)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
        top = max((r["detection_score"] for r in results[token]), default=0.0)
        ax.set_title(f"BEV {token[:8]}: GT {len(gt_boxes)} (green), pred {len(preds)} (red, "
                     f"max score {top:.2f})", fontsize=8)
        for cam, cax in zip(cams, panels[1:]):
            if cam not in sample["data"]:
                continue
            sd = nusc.get("sample_data", sample["data"][cam])
            cal = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            cam_pose = nusc.get("ego_pose", sd["ego_pose_token"])
            K = np.asarray(cal["camera_intrinsic"])
            pixels = load_image(Path(nusc.dataroot) / sd["filename"])
            cax.imshow(pixels)
            size = (pixels.shape[1], pixels.shape[0])
            for boxes, colour in ((gt_boxes, GT), (preds, PRED)):
                for b in boxes:
                    cb = _into(_into(b.copy(), cam_pose), cal)
                    if box_in_image(cb, K, size, vis_level=BoxVisibility.ANY):
                        cb.render(cax, view=K, normalize=True, colors=(colour, colour, colour),
                                  linewidth=1)
            cax.set_xlim(0, size[0])
            cax.set_ylim(size[1], 0)
            cax.set_title(cam, fontsize=8)
    fig.suptitle(f"{ctx.record.workload} {ctx.run_dir.name}: ground truth (green) | "
                 f"predictions >= {ctx.score_thr:g} (red, dashed in BEV)")
    fig.tight_layout()
    return fig, len(tokens)
