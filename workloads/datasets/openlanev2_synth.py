"""Synthetic OpenLane-V2 subset_A: the real on-disk layout with scenes a model can learn.

Writes `ROOT/data_dict_subset_A.json`, per-frame `ROOT/{split}/{segment}/info/{ts}.json` (the 7
Argoverse-2 ring cameras, ring_front_center first, with intrinsics K, camera->ego extrinsics,
the ego pose, lane centerlines of 201 points in the ego frame, traffic elements with their
front-camera boxes, topology_lclc and topology_lcte) and the images
`ROOT/{split}/{segment}/image/{camera}/{ts}.jpg` at the real sizes (front 1550x2048 portrait,
the others 2048x1550; `image_scale` shrinks them and their K alike).

Each segment is a road through an intersection with its lights and signs
(openlanev2_scene.py); the ego drives along the road, 2 m per frame. Images are rendered by
projecting the 3D scene with the rig's calibration: asphalt below the horizon, sky above, each
centerline as a painted stripe whose width follows its depth, small stop bars where segments
meet, and the elements as dark panels filled with their attribute's colour (one colour per
attribute, so it can be learned from pixels), far ones first; the boxes in the annotation are
the projected panels, so everything annotated is visible where the camera sees it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from workloads.datasets.openlanev2_scene import (  # noqa: F401  (CAMERAS: the writer's API)
    CAMERAS,
    STEP_M,
    AttributeDeck,
    camera_calibration,
    panel_corners,
    project,
    segment_scene,
    to_cam,
    world_to_ego,
)

# One colour per traffic-element attribute (0..12), so the attribute is visible.
TE_COLOURS = [(128, 128, 128), (230, 30, 30), (30, 220, 60), (240, 200, 20), (40, 90, 230),
              (160, 40, 200), (20, 200, 200), (250, 120, 0), (120, 60, 20), (250, 250, 250),
              (90, 90, 0), (250, 100, 180), (100, 160, 60)]


def _render(camera: str, scale: float, lanes: list[np.ndarray], tes: list[dict],
            te_corners: list[np.ndarray], rng: np.random.Generator) -> Image.Image:
    k, rot, trans, (w, h) = camera_calibration(camera, scale)
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(70, 100, 3)))
    draw = ImageDraw.Draw(img)
    horizon = int(k[1, 2])
    draw.rectangle([0, 0, w, horizon], fill=(150, 180, 215))
    for lane in lanes:
        cam = to_cam(lane[::4], rot, trans)
        uv = project(cam, k)
        for i in range(len(cam) - 1):
            d = min(cam[i, 2], cam[i + 1, 2])
            if d < 1.0:
                continue
            width = min(max(1, int(0.35 * k[0, 0] / d)), w // 20)
            draw.line([tuple(uv[i]), tuple(uv[i + 1])], fill=(235, 235, 225), width=width)
        for end in (cam[0], cam[-1]):  # stop bars where segments meet
            if end[2] > 1.0:
                u, v = project(end[None], k)[0]
                r = max(1, int(0.9 * k[0, 0] / end[2]))
                draw.rectangle([u - r, v - r / 4, u + r, v + r / 4], fill=(250, 210, 60))
    far_to_near = sorted(range(len(tes)), key=lambda i: -float(te_corners[i][:, 0].mean()))
    for i in far_to_near:
        te, cam = tes[i], to_cam(te_corners[i], rot, trans)
        if (cam[:, 2] < 1.0).any():
            continue
        uv = project(cam, k)
        box = [uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()]
        draw.rectangle(box, fill=(25, 25, 25))
        pad = 0.15 * min(box[2] - box[0], box[3] - box[1])
        draw.rectangle([box[0] + pad, box[1] + pad, box[2] - pad, box[3] - pad],
                       fill=TE_COLOURS[te["attribute"]])
    return img


def _frame(root: Path, split: str, seg: str, ts: int, scene: dict, ego_x: float, scale: float,
           rng: np.random.Generator) -> dict:
    pose_t = np.array([ego_x, 0.0, 0.0])  # the ego drives along the world x axis
    pose = (pose_t, 0.0)
    bx, by = 50.0, 25.0
    kept, remap = [], {}
    for i, lane in enumerate(scene["lanes"]):
        ego = world_to_ego(lane, pose)
        inside = (np.abs(ego[:, 0]) <= bx) & (np.abs(ego[:, 1]) <= by)
        if inside.sum() < 10:
            continue
        idx = np.flatnonzero(inside)
        part = ego[idx[0]: idx[-1] + 1]
        resampled = np.stack([np.interp(np.linspace(0, len(part) - 1, 201),
                                        np.arange(len(part)), part[:, j]) for j in range(3)], 1)
        remap[i] = len(kept)
        kept.append(resampled)
    k0, rot0, trans0, (w0, h0) = camera_calibration(CAMERAS[0], scale)
    tes, te_boxes, te_corners = [], [], []
    for te in scene["tes"]:
        corners = panel_corners(te, pose)
        cam = to_cam(corners, rot0, trans0)
        if (cam[:, 2] < 1.0).any():
            continue
        uv = project(cam, k0)
        x1, y1 = uv.min(0)
        x2, y2 = uv.max(0)
        x1, x2, y1, y2 = max(x1, 0), min(x2, w0), max(y1, 0), min(y2, h0)
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        tes.append(te)
        te_corners.append(corners)
        te_boxes.append([[float(x1), float(y1)], [float(x2), float(y2)]])
    lclc = np.zeros((len(kept), len(kept)), dtype=int)
    for a, b in scene["edges"]:
        if a in remap and b in remap:
            lclc[remap[a], remap[b]] = 1
    lcte = np.zeros((len(kept), len(tes)), dtype=int)
    for j, te in enumerate(tes):
        for lane in te["lanes"]:
            if lane in remap:
                lcte[remap[lane], j] = 1
    sensor = {}
    ego_lanes = [world_to_ego(lane, pose) for lane in scene["lanes"]]
    for cam in CAMERAS:
        k, rot, trans, _ = camera_calibration(cam, scale)
        rel = f"{split}/{seg}/image/{cam}/{ts}.jpg"
        sensor[cam] = {"image_path": rel, "extrinsic": {"rotation": rot.tolist(),
                                                        "translation": trans.tolist()},
                       "intrinsic": {"K": k.tolist(), "distortion": [0.0, 0.0, 0.0]}}
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _render(cam, scale, ego_lanes, tes, te_corners, rng).save(path, quality=88)
    return {
        "version": "v2.1-synthetic", "segment_id": seg,
        "meta_data": {"source": "synthetic", "source_id": f"synthetic-{seg}"},
        "timestamp": ts, "sensor": sensor,
        "pose": {"rotation": np.eye(3).tolist(), "translation": pose_t.tolist()},
        "annotation": {
            "lane_centerline": [{"id": 1000 + i, "points": lane.round(4).tolist(),
                                 "is_intersection_or_connector": False}
                                for i, lane in enumerate(kept)],
            "traffic_element": [{"id": 2000 + j, "category": te["category"],
                                 "attribute": te["attribute"], "points": box}
                                for j, (te, box) in enumerate(zip(tes, te_boxes))],
            "topology_lclc": lclc.tolist(), "topology_lcte": lcte.tolist()}}


def write_synthetic_openlanev2(root: Path, seed: int = 0, train_segments: int = 12,
                               val_segments: int = 3, frames_per_segment: int = 8,
                               image_scale: float = 1.0, first_segment: int = 0,
                               first_timestamp: int = 315967376899927209) -> Path:
    """Write the dataset once (a `.complete` marker makes reruns free); returns root."""
    root = Path(root)
    if (root / ".complete").is_file():
        return root
    rng = np.random.default_rng(seed)
    data_dict: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}}
    seg_no, ts = first_segment, first_timestamp
    for split, count in (("train", train_segments), ("val", val_segments)):
        deck = AttributeDeck(rng)  # per split: each split holds every attribute it can
        for _ in range(count):
            seg = f"{seg_no:05d}"
            seg_no += 1
            scene = segment_scene(rng, frames_per_segment, deck)
            names = []
            for f in range(frames_per_segment):
                ts += int(rng.integers(99_000_000, 101_000_000))  # ~10 Hz, ns
                info = _frame(root, split, seg, ts, scene, f * STEP_M, image_scale, rng)
                path = root / split / seg / "info" / f"{ts}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(info))
                names.append(f"{ts}.json")
            data_dict[split][seg] = names
    (root / "data_dict_subset_A.json").write_text(json.dumps(data_dict))
    (root / ".complete").write_text("ok\n")
    return root
