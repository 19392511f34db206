"""What the nuScenes data decides in the BEVDepth config: cameras, source image size and
the image-augmentation resize range (contract "config from data").

BEVDepth's rule for the resize range: its configs give `resize_lim` as absolute scale
factors of the source image, (0.386, 0.55) for 1600x900 -> final_dim 256x704, and scale
that pair with the input (0.386 * 2, 0.55 * 2 for 512x1408: Megvii's
bev_depth_lss_r50_512x1408_128x128_24e_2key). Both are (0.386, 0.55) x e / 0.44, where
e = max(fH / H, fW / W) is the eval resize of the source image (0.44 for 1600x900 ->
256x704). So a source size and a final_dim give the range (0.386, 0.55) x e / 0.44.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from harness.errors import DatasetError
from workloads.bevdepth.config import CAMERAS, BEVDepthConfig

# BEVDepth's published pair and the eval scale it was written for (1600x900 -> 256x704).
PUBLISHED_RESIZE_LIM = (0.386, 0.55)
PUBLISHED_EVAL_SCALE = max(256 / 900, 704 / 1600)


def eval_scale(final_dim: tuple[int, int], source_wh: tuple[int, int]) -> float:
    (fh, fw), (w, h) = final_dim, source_wh
    return max(fh / h, fw / w)


def resize_lim_for(final_dim: tuple[int, int], source_wh: tuple[int, int]) -> tuple[float, float]:
    """BEVDepth's resize_lim rule (module doc) for a source image size and network input."""
    k = eval_scale(final_dim, source_wh) / PUBLISHED_EVAL_SCALE
    return (round(PUBLISHED_RESIZE_LIM[0] * k, 6), round(PUBLISHED_RESIZE_LIM[1] * k, 6))


def resize_lim_suits(lim: Sequence[float], final_dim: tuple[int, int], source_wh: tuple[int, int]) -> bool:
    """The dataset's own bound: a range far from the eval scale trains on mostly-black crops."""
    base = eval_scale(final_dim, source_wh)
    return 0.5 * base <= lim[0] <= lim[1] <= 2.0 * base


def data_cameras(infos: Sequence[dict]) -> list[str]:
    """Cameras every info has, in BEVDepth's order (others after it, sorted)."""
    common: set[str] | None = None
    for info in infos:
        names = set(info.get("cam_infos", {}))
        common = names if common is None else common & names
    common = common or set()
    return [c for c in CAMERAS if c in common] + sorted(common - set(CAMERAS))


def source_image_size(infos: Sequence[dict], cams: Sequence[str], root: Path, info_file: Path) -> tuple[int, int]:
    """(W, H) of the camera images: the infos' width/height, else the first image's header.
    BEVDepth's augmentation assumes one size; mixed sizes are refused."""
    sizes: dict[tuple[int, int], str] = {}
    for i, info in enumerate(infos):
        for cam in cams:
            ci = info["cam_infos"][cam]
            if "width" in ci and "height" in ci:
                sizes.setdefault((int(ci["width"]), int(ci["height"])), f"info {i} cam_infos.{cam}")
    if not sizes:
        from PIL import Image

        path = root / infos[0]["cam_infos"][cams[0]]["filename"]
        try:
            with Image.open(path) as img:
                return img.size
        except OSError as e:
            raise DatasetError(f"{path}: cannot read image (field 'cam_infos.{cams[0]}.filename' of "
                               f"info 0 in {info_file}): {e}") from e
    if len(sizes) > 1:
        (a, wa), (b, wb) = list(sizes.items())[:2]
        raise DatasetError(f"{info_file}: camera images of different sizes ({a[0]}x{a[1]} at {wa}, "
                           f"{b[0]}x{b[1]} at {wb}, fields width/height); BEVDepth's augmentation "
                           "assumes one size")
    return next(iter(sizes))


def config_from_data(cfg: BEVDepthConfig, user_set: frozenset[str], infos: Sequence[dict], root: Path,
                     info_file: Path) -> tuple[BEVDepthConfig, dict[str, str]]:
    """The config with cams, num_cams, source_image_wh and ida_resize_lim taken from the
    data where the user did not set them, and where each came from. Explicit values that
    the data contradicts raise DatasetError naming the file and field."""
    updates: dict[str, Any] = {}
    from_data: dict[str, str] = {}
    found = data_cameras(infos)
    if "cams" in user_set:
        missing = [c for c in cfg.cams if c not in found]
        if missing:
            raise DatasetError(f"{info_file}: not every info has field 'cam_infos.{missing[0]}' "
                               f"(--set cams; cameras in every info: {', '.join(found) or 'none'})")
        cams = list(cfg.cams)
    else:
        if not found:
            raise DatasetError(f"{info_file}: no camera is present in every info (field 'cam_infos')")
        cams = found
        updates["cams"] = tuple(found)
        from_data["cams"] = f"{info_file} (cam_infos present in every sample)"
    if "num_cams" in user_set:
        if cfg.num_cams != len(cams):
            raise DatasetError(f"{info_file}: field 'cam_infos' gives {len(cams)} cameras ({', '.join(cams)}) "
                               f"but --set num_cams={cfg.num_cams}")
    else:
        updates["num_cams"] = len(cams)
        from_data["num_cams"] = f"{info_file} (cam_infos)"
    wh = source_image_size(infos, cams, root, info_file)
    size_note = f"{info_file} (cam_infos width/height {wh[0]}x{wh[1]})"
    if "source_image_wh" in user_set:
        if tuple(cfg.source_image_wh) != wh:
            raise DatasetError(f"{info_file}: fields cam_infos.*.width/height give {wh[0]}x{wh[1]} images "
                               f"but --set source_image_wh={cfg.source_image_wh[0]},{cfg.source_image_wh[1]}")
    else:
        updates["source_image_wh"] = wh
        from_data["source_image_wh"] = size_note
    rule = resize_lim_for(cfg.image_size, wh)
    if "ida_resize_lim" in user_set:
        if not resize_lim_suits(cfg.ida_resize_lim, cfg.image_size, wh):
            raise DatasetError(
                f"{info_file}: fields cam_infos.*.width/height give {wh[0]}x{wh[1]} images, which "
                f"--set ida_resize_lim={cfg.ida_resize_lim} does not suit at image_size "
                f"{cfg.image_size[1]}x{cfg.image_size[0]} (BEVDepth's rule gives {rule})")
    else:
        updates["ida_resize_lim"] = rule
        from_data["ida_resize_lim"] = (f"{size_note}: BEVDepth's rule (0.386, 0.55) x "
                                       f"max(fH/H, fW/W) / 0.44 at image_size {cfg.image_size[1]}x"
                                       f"{cfg.image_size[0]}")
    return dataclasses.replace(cfg, **updates), from_data
