"""Which implementation each portable op runs: a backend's native kernel or the pure one.

A backend plugin offers native kernels through the hook `harness_op_kernels(backend)`
(harness/hookspecs.py), by op name ("nms", "modulated_deform_conv2d", ...), each with the
portable op's signature. `install_backend_kernels(name)` asks the loaded plugins for the
named backend's kernels (collected by the host) and registers them; each op in ops*.py then calls `dispatch(op,
portable)`, which returns the registered kernel or the portable function and notes which
one ran. `used_implementations()` is that note, for the run record:
{"nms": "portable", "modulated_deform_conv2d": "npu:backends.npu"}.

Process-wide state on purpose: the ops are called from deep inside model code (mmdet's
heads call mmcv.ops.batched_nms), where no workload object can be threaded through.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Mapping

from harness.errors import UsageError

PORTABLE = "portable"
# The op names a kernel may replace (anything else is refused: a typo would never run).
DISPATCHED_OPS: frozenset[str] = frozenset({
    "nms", "nms_rotated", "box_iou_rotated", "deform_conv2d", "modulated_deform_conv2d",
    "sigmoid_focal_loss",
})

_lock = threading.Lock()
_kernels: dict[str, tuple[Callable[..., Any], str]] = {}
_used: dict[str, str] = {}


def register_kernel(op: str, kernel: Callable[..., Any], source: str) -> None:
    """Use `kernel` for `op` from now on; `source` names it in used_implementations()."""
    if op not in DISPATCHED_OPS:
        raise ValueError(f"no portable op {op!r} to replace (known: {sorted(DISPATCHED_OPS)})")
    if not callable(kernel):
        raise TypeError(f"kernel for {op!r} from {source} is not callable: {kernel!r}")
    with _lock:
        _kernels[op] = (kernel, source)


def register_kernels(kernels: Mapping[str, Callable[..., Any]], backend: str) -> dict[str, str]:
    """Register a backend's kernels; each is labelled "<backend>:<module of the kernel>"."""
    labels = {}
    for op, kernel in kernels.items():
        module = getattr(kernel, "__module__", None) or type(kernel).__name__
        labels[op] = f"{backend}:{module}"
        register_kernel(op, kernel, labels[op])
    return labels


def install_backend_kernels(backend: str, offered: Iterable[Mapping[str, Callable[..., Any]] | None]
                            ) -> dict[str, str]:
    """Register what the plugins offered for `backend` (the host collects the answers of
    hook harness_op_kernels: Workload.op_kernels) and return {op: label}. Two plugins
    offering one op is a usage error naming the op."""
    merged: dict[str, Callable[..., Any]] = {}
    for kernels in offered:
        for op, kernel in (kernels or {}).items():
            if op in merged and merged[op] is not kernel:
                raise UsageError(f"two plugins offer a {backend} kernel for op {op!r}")
            merged[op] = kernel
    return register_kernels(merged, backend)


def clear_kernels() -> None:
    """Forget every registered kernel and every note of use (tests, a new run)."""
    with _lock:
        _kernels.clear()
        _used.clear()


def dispatch(op: str, portable: Callable[..., Any]) -> Callable[..., Any]:
    """The function to run for `op` now: the registered kernel, else `portable`."""
    entry = _kernels.get(op)
    function, label = entry if entry is not None else (portable, PORTABLE)
    if _used.get(op) != label:  # a dict read per call; the lock only on a change
        with _lock:
            _used[op] = label
    return function


def used_implementations() -> dict[str, str]:
    """{op: "portable" | "<backend>:<module>"} for every dispatched op called so far."""
    with _lock:
        return dict(sorted(_used.items()))
