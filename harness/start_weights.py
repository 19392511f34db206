"""Starting weights: a pretrained backbone (`--set backbone_weights=PATH`) or a whole model
(`--set init_checkpoint=PATH`, `harness eval --checkpoint PATH`) read from a file in the layout
its original code wrote (torchvision, mmdet/mmcv, a Lightning module, this project's own).

A workload declares, per part ("backbone", "model"), the layouts it reads: each a
`WeightLayout` that renames the original's keys to this project's module names. The layout is
detected by trying them in turn (this project's names first); loading is strict (every
tensor of the part comes from the file, every kept key of the file lands in the part, shapes
equal) and a file that fits no layout is one UsageError line naming the layout it came
closest to and the missing, unexpected and mis-shaped keys. What was loaded (path, sha256,
layout, keys) goes into the record: a verdict must know which weights a run started from.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from harness.errors import UsageError
from harness.safe_load import safe_torch_load
from harness.workload_config import declared_field

if TYPE_CHECKING:
    from harness.api import Workload

# Wrappers around a state dict in the files the originals write: mmcv/mmengine and Lightning
# save {"state_dict": ...}, others {"model": ...}; DDP and torch.compile prefix the names.
_CONTAINERS = ("state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# A backbone's tensors inside a whole detector's checkpoint (mmdet, mmdet3d, BEVDepth).
BACKBONE_PREFIXES = ("backbone.", "img_backbone.", "model.backbone.img_backbone.")
PARTS = ("backbone", "model")


@dataclasses.dataclass(frozen=True)
class WeightLayout:
    """How one original names a part's tensors. `rename` maps an original key to this
    project's key, or to None for a tensor the part has no use for (a classifier head)."""

    name: str
    source: str  # the code whose names these are (repository, file, commit)
    rename: Callable[[str], str | None]
    # Applied to the file's tensors before renaming, where names alone cannot say it: a
    # packed q/k/v projection split in three, rows of another class order permuted.
    transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


OWN_LAYOUT = WeightLayout("harness", "this project's module names", lambda key: key)


@dataclasses.dataclass
class Fit:
    """A file's tensors renamed by one layout, and how they fall short of the part."""

    layout: WeightLayout
    mapped: dict[str, torch.Tensor]
    ignored: list[str]
    missing: list[str]
    unexpected: list[str]
    shapes: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes)

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.shapes)

    def describe(self) -> str:
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape (checkpoint vs model)", self.shapes)):
            if keys:
                more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
                parts.append(f"{label}: {', '.join(keys[:4])}{more}")
        return "; ".join(parts)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _strip(state: dict[str, Any], prefixes: Sequence[str]) -> dict[str, Any]:
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file in any of the originals' wrappers (safely loaded)."""
    obj = safe_torch_load(path)
    for key in _CONTAINERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise UsageError(f"{path}: {what} must hold a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UsageError(f"{path}: {what} holds no tensors (keys: "
                         f"{', '.join(map(str, list(obj)[:6]))})")
    return _strip(tensors, _WRAPPER_PREFIXES)


def backbone_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """A backbone file's tensors: a bare backbone's as they are, a whole detector's under
    its backbone prefix (the rest, counted, is not the backbone's). Returns (tensors, dropped)."""
    for prefix in BACKBONE_PREFIXES:
        inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if inner:
            return inner, len(state) - len(inner)
    return state, 0


def fit(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
        layout: WeightLayout) -> Fit:
    mapped: dict[str, torch.Tensor] = {}
    ignored = []
    if layout.transform is not None:
        state = layout.transform(state)
    for key, value in state.items():
        name = layout.rename(key)
        if name is None:
            ignored.append(key)
        else:
            mapped[name] = value
    # Files written before BatchNorm counted its batches have no num_batches_tracked.
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    return Fit(layout, mapped, ignored, missing, unexpected, shapes)


def best_fit(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
             layouts: Sequence[WeightLayout]) -> Fit:
    """The first layout (this project's names first) under which the file fits the part
    exactly, else the one with the fewest problems (for the error message)."""
    fits = [fit(state, own, layout) for layout in (OWN_LAYOUT, *layouts)]
    for candidate in fits:
        if candidate.ok:
            return candidate
    return min(fits, key=lambda f: f.problems)  # min keeps the first of equals


def layouts_named(layouts: Sequence[WeightLayout]) -> str:
    return ", ".join(layout.name for layout in (OWN_LAYOUT, *layouts))


def load_part(module: nn.Module, path: str | Path, layouts: Sequence[WeightLayout], *,
              part: str, option: str) -> dict[str, Any]:
    """Copy the file's tensors into `module` (strict); returns the record's entry for it.
    `option` names what the user gave (e.g. `backbone_weights`) in the error line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{option}: no file at {path}")
    state = read_state_dict(path, option)
    dropped = 0
    if part == "backbone":
        state, dropped = backbone_tensors(state)
    own = module.state_dict()
    found = best_fit(state, own, layouts)
    if not found.ok:
        raise UsageError(f"{path}: {option} does not fit the {part} (closest layout "
                         f"{found.layout.name}; read: {layouts_named(layouts)}): "
                         f"{found.describe()}")
    # load_state_dict copies into the module's own dtypes (an fp16 release into fp32 weights).
    module.load_state_dict(found.mapped, strict=False)  # strictness checked above
    return {"part": part, "path": str(path.resolve()), "sha256": sha256_file(path),
            "layout": found.layout.name, "keys_loaded": len(found.mapped),
            "keys_ignored": len(found.ignored) + dropped}


def load_start_weights(workload: Workload, model: nn.Module) -> list[dict[str, Any]]:
    """The workload config's starting weights loaded into a freshly built model: the
    backbone's first, then a whole-model checkpoint over everything. Returns the record's
    entries (empty: the model starts from its random initialisation)."""
    backbone_weights = str(declared_field(workload.config, "backbone_weights") or "")
    init_checkpoint = str(declared_field(workload.config, "init_checkpoint") or "")
    entries = []
    if backbone_weights:
        backbone = workload.backbone(model)
        if backbone is None:
            raise UsageError(f"workload {workload.name}: backbone_weights given, but its model "
                             f"has no backbone to load them into")
        entries.append(load_part(backbone, backbone_weights,
                                 workload.weight_layouts("backbone"), part="backbone",
                                 option="backbone_weights"))
    if init_checkpoint:
        entries.append(load_part(model, init_checkpoint, workload.weight_layouts("model"),
                                 part="model", option="init_checkpoint"))
    return entries


def load_model_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
                       layouts: Sequence[WeightLayout], hint: str = "") -> str:
    """A checkpoint's already-read tensors into the whole model (strict, layouts detected);
    returns the layout's name. `hint` ends the error line (e.g. which preset was built)."""
    found = best_fit(state, model.state_dict(), layouts)
    if not found.ok:
        raise UsageError(f"{path}: weights do not fit the model built from this config "
                         f"(closest layout {found.layout.name}; read: {layouts_named(layouts)})"
                         f": {found.describe()}{hint}")
    model.load_state_dict(found.mapped, strict=False)  # strictness checked above
    return found.layout.name


ManifestRows = list[tuple[str, tuple[int, ...]]]


def read_manifest(path: Path) -> dict[str, ManifestRows]:
    """An original's state-dict manifest (`name<TAB>shape` rows, `#` comments; a line
    `# [section] ...` starts a named section, rows before any section go under "")."""
    sections: dict[str, ManifestRows] = {}
    rows = sections.setdefault("", [])
    for line in Path(path).read_text().splitlines():
        if line.startswith("# ["):
            rows = sections.setdefault(line[3:line.index("]")], [])
        elif line.strip() and not line.startswith("#"):
            name, shape = line.split("\t")
            rows.append((name, tuple(int(d) for d in shape.split(",")) if shape else ()))
    if not sections[""]:
        del sections[""]
    return sections
