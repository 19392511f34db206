"""Loading checkpoints without running code: `torch.load(..., weights_only=True)`, always.

A pickle can call any importable function while it is read, so a checkpoint received from
someone else could run code on load. The harness's checkpoints hold tensors and plain Python
values only (the config as a dict), which torch's restricted unpickler accepts; anything that
needs more is refused with the reason, never retried with `weights_only=False`.
"""
from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from harness.errors import UsageError

# Prefixes that wrappers add to parameter names (DDP's .module, torch.compile's ._orig_mod).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class UnsafeCheckpoint(UsageError):
    """The file needs more than tensors and plain values to unpickle; it is not loaded."""


def safe_torch_load(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers, onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    _check_format(path)
    try:
        with warnings.catch_warnings():
            # torch's own lines about the pickle (e.g. "Detected pickle protocol 4") would
            # stand beside the one line this function raises.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        what = f" (it references {found.group(1)})" if found else ""
        raise UnsafeCheckpoint(
            f"{path}: refused: loading it needs more than tensors and plain Python values"
            f"{what}, and unpickling such a file can run code. Re-save it as a dict of tensors "
            f"(e.g. torch.save(model.state_dict(), path)) from a trusted environment") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: not a readable torch checkpoint ({first})") from None


def _check_format(path: Path) -> None:
    """A file that is neither torch.save's zip archive nor a pickle stream (which starts
    with the PROTO opcode, 0x80: torch's legacy format, a pickled state dict) is not a
    checkpoint at all: said so, rather than refused as a pickle that could run code."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not is_zip and not head.startswith((b"\x80", b"PK")):  # PK: a damaged zip, torch says
        raise UsageError(f"{path}: not a torch checkpoint (neither torch.save's zip archive "
                         f"nor a pickle; it starts with {head!r})")


@dataclasses.dataclass
class Checkpoint:
    """Weights plus what the harness knows about where they came from."""

    state_dict: dict[str, torch.Tensor]
    workload: str | None = None  # None for a bare state dict
    workload_config: dict[str, Any] | None = None
    step: int | None = None
    layout: str = "harness"  # "harness" (a run's checkpoint.pt) or "state_dict"
    weights: str = "model"  # "ema": the run's EMA weights (what its metrics scored)


def _strip_wrapper_prefix(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_checkpoint(path: Path) -> Checkpoint:
    """A run's checkpoint.pt ({"model", "workload", "workload_config", ...}) or a bare state dict."""
    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: expected a dict (a run's checkpoint or a state dict), "
                         f"got {type(obj).__name__}")
    if isinstance(obj.get("model"), dict):
        cfg = obj.get("workload_config")
        ema = obj.get("ema")
        if isinstance(ema, dict) and isinstance(ema.get("weights"), dict):
            # A run with model EMA scored the average (harness/ema.py): evaluate the same.
            return Checkpoint(_strip_wrapper_prefix(ema["weights"]), obj.get("workload"),
                              cfg if isinstance(cfg, dict) else None, obj.get("step"),
                              "harness", "ema")
        return Checkpoint(_strip_wrapper_prefix(obj["model"]), obj.get("workload"),
                          cfg if isinstance(cfg, dict) else None, obj.get("step"), "harness")
    if isinstance(obj.get("state_dict"), dict):  # mmcv/mmdet-style wrapper
        obj = obj["state_dict"]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(_strip_wrapper_prefix(obj), layout="state_dict")
    raise UsageError(f"{path}: neither a harness checkpoint (no 'model' dict) nor a state dict "
                     f"(keys: {', '.join(map(str, list(obj)[:8]))})")

