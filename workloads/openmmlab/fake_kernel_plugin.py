"""A backend plugin's native kernel, for the tests (HARNESS_PLUGINS=
workloads.openmmlab.fake_kernel_plugin): it offers an `nms` for the cpu backend that is the
portable one under another name, so a run shows the dispatch and the record's op list."""
from __future__ import annotations

from typing import Any, Callable

from harness import hookimpl
from workloads.openmmlab.ops_nms import _nms_portable


def native_nms(*args: Any, **kwargs: Any) -> Any:
    return _nms_portable(*args, **kwargs)


@hookimpl
def harness_op_kernels(backend: str) -> dict[str, Callable[..., Any]] | None:
    return {"nms": native_nms} if backend == "cpu" else None
