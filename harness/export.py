"""ONNX export of a workload's network forward (fixed H x W, dynamic batch), checked by onnx.

What is exported is exactly the call the workload makes to its model during evaluation:
the harness runs one val batch through the eval path with the model wrapped in a recorder,
and exports the model with those positional tensor arguments. Pre-processing before that
call and decoding after it stay in Python, shared by the PyTorch and ONNX Runtime paths.

The TorchScript-based exporter (`dynamo=False`) is used: it needs no onnxscript, handles the
conv/upsample/concat graphs of these models, and names the first op it cannot export.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from harness.api import Workload
from harness.atomic import atomic_write
from harness.errors import MissingExtra, UsageError
from harness.inference import CallRecorder, predict_batch
from harness.training import to_device

DEFAULT_OPSET = 17


class ExportError(UsageError):
    """The model's forward does not export (an op without an ONNX mapping, control flow)."""


def require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingExtra("ONNX export needs onnx: pip install 'perception-harness[onnx]'") from None
    return onnx


def capture_forward(workload: Workload, model: torch.nn.Module, batch: Any,
                    device: torch.device) -> tuple[tuple[torch.Tensor, ...], Any]:
    """The positional tensor arguments of the workload's one model call on `batch`, and what
    the model returned."""
    recorder = CallRecorder(model)
    with torch.no_grad():
        predict_batch(workload, recorder, to_device(batch, device))
    if not recorder.calls:
        raise ExportError(f"workload {workload.name}: its eval path never calls the model "
                          f"object, so there is no forward to export")
    if len(recorder.calls) > 1:
        raise ExportError(f"workload {workload.name}: its eval path calls the model "
                          f"{len(recorder.calls)} times per batch; export covers a single call")
    args, kwargs, outputs = recorder.calls[0]
    if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
        what = (f"keyword arguments ({', '.join(kwargs)})" if kwargs else "non-tensor arguments ("
                + ", ".join(f"argument {i} is a {type(a).__name__}" for i, a in enumerate(args)
                            if not isinstance(a, torch.Tensor)) + ")")
        raise ExportError(f"workload {workload.name}: the model is called with {what}; "
                          f"export takes positional tensors only")
    return tuple(args), outputs


class _FlatOutputs(torch.nn.Module):
    """The model with its (nested) outputs flattened to a tuple of tensors, ONNX's view."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.utils._pytree.tree_leaves(self.model(*args)))


def _key_name(key: Any) -> str:
    """One step of a pytree path as written in an output name: a dict key, a list index or an
    attribute name."""
    pytree = torch.utils._pytree
    if isinstance(key, pytree.MappingKey):
        return str(key.key)
    if isinstance(key, pytree.SequenceKey):
        return str(key.idx)
    if isinstance(key, pytree.GetAttrKey):
        return str(key.name)
    return str(key)


def output_names(outputs: Any) -> list[str]:
    """Names for the flattened outputs: their path in the returned structure (out.0, out.cls)."""
    leaves, _ = torch.utils._pytree.tree_flatten_with_path(outputs)
    names = []
    for path, _ in leaves:
        keys = [_key_name(k) for k in path]
        names.append(".".join(["out", *keys]) if keys else "out")
    return names


def _failing_op(message: str) -> str | None:
    for pattern in (r"operator '([^']+)'", r"operator ([\w:.]+)", r"namespace ([\w:.]+)",
                    r"aten::[\w.]+|[\w]+::[\w.]+"):
        found = re.search(pattern, message)
        if found:
            return found.group(1) if found.groups() else found.group(0)
    return None


def export_onnx(workload: Workload, model: torch.nn.Module, args: tuple[torch.Tensor, ...],
                outputs: Any, path: Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Export `model(*args)` to `path` with a dynamic batch axis; check it; describe it."""
    onnx = require_onnx()
    model = model.eval()
    inputs = [f"input_{i}" for i in range(len(args))]
    names = output_names(outputs)
    dynamic = {n: {0: "batch"} for n in [*inputs, *names]}
    path = Path(path)

    def write(tmp: str) -> None:
        try:
            with warnings.catch_warnings():
                # The TorchScript exporter is deprecated in favour of dynamo; chosen on purpose.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                # The exporter restores the wrapper's train/eval mode afterwards, recursively:
                # a wrapper left in its default train mode would put BatchNorm in train mode.
                torch.onnx.export(_FlatOutputs(model).eval(), args, tmp, dynamo=False,
                                  input_names=inputs, output_names=names,
                                  dynamic_axes=dynamic, opset_version=opset,
                                  do_constant_folding=True)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types
            if shutil.disk_usage(path.parent).free < 2**20:  # its writer's "full disk"
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
            text = str(exc).strip()
            op = _failing_op(text)
            first = text.splitlines()[0] if text else type(exc).__name__
            raise ExportError(f"workload {workload.name} does not export to ONNX (opset "
                              f"{opset})" + (f": op {op} has no ONNX mapping" if op else "")
                              + f" [{type(exc).__name__}: {first[:300]}]") from None

    # Through the one atomic writer: a failed or cut-short export leaves no torn .onnx, and a
    # disk error is the file's (named), not the workload's.
    try:
        atomic_write(path, write)
    except OSError as exc:
        if exc.filename == str(path):
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx.checker.ValidationError and friends
        raise ExportError(f"{path}: the exported graph fails onnx.checker: {exc}") from None
    return {"path": str(path), "opset": opset, "inputs": [
        {"name": n, "shape": ["batch", *a.shape[1:]], "dtype": str(a.dtype).replace("torch.", "")}
        for n, a in zip(inputs, args)], "outputs": names, "exporter": "torch.onnx (TorchScript)"}


def export_for_checkpoint(workload_name: str, checkpoint: Path, out: Path | None, opset: int,
                          scale: str | None = None, data: Path | None = None,
                          cache_dir: Path | None = None,
                          overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """`harness export`: the checkpoint's model, traced on the first val batch, to ONNX."""
    from harness.eval_config import EvalConfig, load_checkpoint_into, prepare_workload

    require_onnx()
    path = Path(out) if out is not None else Path(checkpoint).with_name("model.onnx")
    check_export_target(path, opset)  # before seconds of tracing
    cfg = EvalConfig(workload=workload_name, checkpoint=Path(checkpoint), scale=scale, data=data,
                     cache_dir=cache_dir, overrides=overrides)
    workload, ckpt, datasets, scale = prepare_workload(cfg)
    model = workload.build_model()
    load_checkpoint_into(model, workload, ckpt, cfg, scale)
    model.eval()
    loader = torch.utils.data.DataLoader(
        datasets.val, batch_size=workload.config.eval_batch_size or 1,
        shuffle=False, collate_fn=datasets.collate)
    batch = next(iter(loader), None)
    if batch is None:
        raise UsageError("the val split is empty: no batch to trace the export with")
    args, outputs = capture_forward(workload, model, batch, torch.device("cpu"))
    return export_onnx(workload, model, args, outputs, path, opset)


def check_export_target(path: Path, opset: int) -> None:
    """The opset the TorchScript exporter supports and a folder the graph can be written to:
    one line each, exit 2, before anything is traced (an exporter error would read as the
    workload's fault, and a failed write would leave a torn file)."""
    from torch.onnx import _constants

    low, high = _constants.ONNX_BASE_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    if not low <= opset <= high:
        raise UsageError(f"--opset {opset}: this torch exports opsets {low} to {high}")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{path.name}.write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
