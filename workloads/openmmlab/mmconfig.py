"""An OpenMMLab config as the harness reads it: loaded with mmengine, `--set` keys merged as
mmengine's cfg-options, every path under the config's data root moved to `--data`, the class
set taken from a COCO-format annotation file, and pretrained files that are not on disk
dropped (the record names what was loaded and what was dropped).

mmengine substitutes `data_root` into other strings when it parses the file
(`ann_file=data_root + 'annotations/...'`), so replacing the `data_root` keys alone would
leave the evaluator reading the old folder: every string that starts with the old root is
rewritten."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from harness.errors import ConfigError, DatasetError, UsageError


def load_config(path: Path, options: tuple[str, ...]) -> Any:
    """mmengine's Config of `path` with `options` ("a.b=value", values parsed as mmengine's
    --cfg-options parses them) merged in."""
    from mmengine.config import Config, DictAction

    try:
        cfg = Config.fromfile(str(path))
    except FileNotFoundError as exc:
        raise UsageError(f"config {path}: {exc}") from None
    except (SyntaxError, ImportError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"config {path} does not load: {type(exc).__name__}: {exc}") from None
    merged: dict[str, Any] = {}
    for item in options:
        key, _, text = item.partition("=")
        parsed = DictAction._parse_iterable(text)
        merged[key.strip()] = parsed
    if merged:
        try:
            cfg.merge_from_dict(merged)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"--set {', '.join(merged)}: {exc}") from None
    return cfg


def walk(node: Any, visit: Callable[[dict[str, Any], str, Any], None]) -> None:
    """Call visit(parent, key, value) for every key of every dict (and of dicts in lists)."""
    if isinstance(node, dict):
        for key in list(node):
            visit(node, key, node[key])
            walk(node[key], visit)
    elif isinstance(node, (list, tuple)):
        for item in node:
            walk(item, visit)


def config_data_root(cfg: Any) -> str:
    """The data root the config was written for: its top-level `data_root`, else the train
    dataset's."""
    root = cfg.get("data_root") or (inner_dataset(cfg, "train_dataloader") or {}).get("data_root")
    if not isinstance(root, str) or not root:
        raise UsageError("config has no data_root (top level or train_dataloader.dataset): "
                         "--data cannot tell which paths to move")
    return root


def move_data_root(cfg: Any, new_root: Path) -> int:
    """Rewrite every string starting with the config's data root to start with `new_root`;
    returns how many were rewritten."""
    old = config_data_root(cfg)
    new = str(new_root).rstrip("/") + "/"
    old_stem = old.rstrip("/")
    count = 0

    def visit(parent: dict[str, Any], key: str, value: Any) -> None:
        nonlocal count
        if isinstance(value, str) and (value == old_stem or value.startswith(old_stem + "/")):
            parent[key] = new + value[len(old_stem) + 1:] if value != old_stem else new
            count += 1

    cfg_dict = cfg._cfg_dict if hasattr(cfg, "_cfg_dict") else cfg
    walk(cfg_dict, visit)
    return count


def coco_classes(ann_file: Path) -> tuple[str, ...]:
    """The category names of a COCO-format annotation file, in id order."""
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{ann_file}: no such annotation file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{ann_file}: not a JSON annotation file ({exc})") from None
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not cats:
        raise DatasetError(f"{ann_file}: no 'categories' list")
    try:
        return tuple(str(c["name"]) for c in sorted(cats, key=lambda c: int(c["id"])))
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{ann_file}: a category without an integer 'id' and a 'name'") from None


def inner_dataset(cfg: Any, loader: str) -> dict[str, Any] | None:
    """The dataset dict of `loader`, through wrappers (RepeatDataset, ClassBalancedDataset,
    CBGSDataset...), which hold the real one under `dataset`."""
    ds = cfg.get(loader, {}).get("dataset")
    while isinstance(ds, dict) and isinstance(ds.get("dataset"), dict):
        ds = ds["dataset"]
    return ds if isinstance(ds, dict) else None


def set_classes(cfg: Any, classes: tuple[str, ...]) -> list[str]:
    """Give every dataset of the config the class set and every `num_classes` of the model
    its size; returns the keys changed (for the record)."""
    changed: list[str] = []
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds = inner_dataset(cfg, loader)
        if ds is not None:
            meta = dict(ds.get("metainfo") or {})
            meta["classes"] = classes
            ds["metainfo"] = meta
            changed.append(f"{loader}.dataset.metainfo.classes")

    def visit(parent: dict[str, Any], key: str, value: Any) -> None:
        if key == "num_classes" and isinstance(value, int) and value != len(classes):
            parent[key] = len(classes)
            changed.append("model...num_classes")

    walk(cfg.get("model", {}), visit)
    return changed


def drop_missing_pretrained(cfg: Any) -> tuple[list[str], list[str]]:
    """Remove `init_cfg=dict(type='Pretrained', checkpoint=...)` and `pretrained=` entries of
    the model whose file is not on disk (a URL or `open-mmlab://` name would be downloaded;
    these machines have no network, and a benchmark must not fetch weights silently).
    Returns (kept files, dropped names)."""
    kept: list[str] = []
    dropped: list[str] = []

    def visit(parent: dict[str, Any], key: str, value: Any) -> None:
        if key == "init_cfg" and isinstance(value, dict) and value.get("type") == "Pretrained":
            name = str(value.get("checkpoint", ""))
            if Path(name).is_file():
                kept.append(str(Path(name).resolve()))
            else:
                dropped.append(name)
                parent[key] = None
        elif key == "pretrained" and isinstance(value, str):
            if Path(value).is_file():
                kept.append(str(Path(value).resolve()))
            else:
                dropped.append(value)
                parent[key] = None

    walk(cfg.get("model", {}), visit)
    return kept, dropped
