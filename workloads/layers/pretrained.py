"""Pretrained backbone weights from a local file (`--set backbone_weights=PATH`); nothing is
downloaded.

Accepted layouts, detected from the keys:
- ResNet: torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc` ignored), also inside
  mmdet/mmcv checkpoints (`state_dict` with a `backbone.` prefix);
- Darknet-53: mmdet's (`conv1.conv`, `conv1.bn`, `conv_res_block1.conv.conv`,
  `conv_res_block1.res0.conv1.conv`, ...), as in open-mmlab's darknet53 checkpoint;
- either module's own state dict (this project's names).
A file that does not fit the module (a missing key, a shape mismatch) is a UsageError
naming the file and the first offending key.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from harness.errors import UsageError

_PREFIXES = ("module.", "backbone.", "img_backbone.")
_IGNORED = re.compile(r"^(fc|head|classifier)\.")


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path}: backbone_weights file not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise UsageError(f"{path}: cannot read backbone_weights ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path}: backbone_weights must hold a state dict of tensors")
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def torchvision_resnet_key(key: str) -> str:
    """torchvision ResNet name -> workloads.layers.resnet.ResNet name."""
    return re.sub(r"^layer(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.", key)


def mmdet_darknet_key(key: str) -> str:
    """mmdet Darknet name -> workloads.layers.darknet.Darknet name (ConvModule conv/bn =
    our Sequential's 0/1)."""
    key = re.sub(r"^conv1\.(conv|bn)\.", lambda m: f"stem.{'01'[m.group(1) == 'bn']}.", key)
    key = re.sub(r"^conv_res_block(\d+)\.conv\.(conv|bn)\.",
                 lambda m: f"stages.{int(m.group(1)) - 1}.0.{'01'[m.group(2) == 'bn']}.", key)
    return re.sub(r"^conv_res_block(\d+)\.res(\d+)\.(conv[12])\.(conv|bn)\.",
                  lambda m: (f"stages.{int(m.group(1)) - 1}.{int(m.group(2)) + 1}.{m.group(3)}."
                             f"{'01'[m.group(4) == 'bn']}."), key)


def load_backbone_weights(module: nn.Module, path: str | Path) -> list[str]:
    """Copy a pretrained state dict into `module` (strict on the module's side); returns the
    file's keys that were ignored (a classifier head)."""
    path = Path(path)
    raw = _state_dict(path)
    own = module.state_dict()
    ignored = [k for k in raw if _IGNORED.match(k)]
    raw = {k: v for k, v in raw.items() if k not in ignored}
    mapped = {k: v for k, v in raw.items()}
    if not set(mapped) <= set(own):
        for rename in (torchvision_resnet_key, mmdet_darknet_key):
            candidate = {rename(k): v for k, v in raw.items()}
            if set(candidate) <= set(own):
                mapped = candidate
                break
    unknown = sorted(set(mapped) - set(own))
    if unknown:
        raise UsageError(f"{path}: backbone_weights key '{unknown[0]}' is not in the backbone "
                         f"(layouts read: torchvision ResNet, mmdet Darknet, this project's)")
    # Old torchvision files predate BatchNorm's num_batches_tracked buffer.
    missing = sorted(k for k in set(own) - set(mapped) if not k.endswith("num_batches_tracked"))
    if missing:
        raise UsageError(f"{path}: backbone_weights has no '{missing[0]}' (the backbone's architecture "
                         "differs from the file's)")
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UsageError(f"{path}: backbone_weights '{key}' has shape {tuple(value.shape)}, the "
                             f"backbone {tuple(own[key].shape)}")
    module.load_state_dict(mapped, strict=False)  # strictness checked above
    return ignored
