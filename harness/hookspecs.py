"""Every hook the harness calls. Plugins implement them with `@harness.hookimpl`.

pluggy is used for discovery and observation; the training hot path calls no hook
except `harness_step_end`, which observers must keep cheap (no device sync).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import argparse

    from harness.api import Backend, Run, Workload
    from harness.config import RunConfig
    from harness.records import Record
    from harness.show_context import Drawer

hookspec = pluggy.HookspecMarker("harness")


@hookspec
def harness_backends() -> list[type[Backend]]:
    """Return the Backend classes this plugin provides."""


@hookspec
def harness_workloads() -> list[type[Workload]]:
    """Return the Workload classes this plugin provides."""


@hookspec(historic=True)
def harness_addoption(parser: argparse.ArgumentParser) -> None:
    """Add options to `harness run` (historic: plugins registered late still get it)."""


@hookspec
def harness_configure(config: RunConfig) -> None:
    """Called once with the parsed RunConfig, before the backend is set up."""


@hookspec
def harness_run_start(run: Run) -> None:
    """The run is set up (model, data, device) and about to train."""


@hookspec
def harness_step_end(run: Run, step: int) -> None:
    """An optimizer step finished. `run.last_log` holds host values at log steps only."""


@hookspec
def harness_eval_end(run: Run, metrics: dict[str, float]) -> None:
    """An evaluation finished with these metrics."""


@hookspec
def harness_run_end(run: Run, record: Record) -> None:
    """The run ended (any status); `record` is what was written to record.json, typed
    (harness.records.Record: read its attributes; mapping reads still work, read-only)."""


@hookspec
def harness_show_drawers() -> dict[str, Drawer]:
    """Predictions formats (the "format" a workload's write_predictions() returns) -> the
    function that draws such a file for `harness show`. Implemented by drawing plugins only:
    modules importing neither torch nor a workload, which show loads on their own (the
    built-in workloads.drawing, entry points of group "harness.show"); see harness/show.py."""


@hookspec
def harness_op_kernels(backend: str) -> dict[str, Callable[..., Any]] | None:
    """Native kernels for the portable ops of workloads/openmmlab, when running on the
    backend named `backend`: op name ("nms", "nms_rotated", "box_iou_rotated",
    "deform_conv2d", "modulated_deform_conv2d", "sigmoid_focal_loss") -> a callable with the
    signature and return convention of the portable function that op dispatches to
    (docs/openmmlab.md). None or {} for none; a plugin answers only for its own backend and
    imports its vendor module inside the kernels, never at import. The host asks when a run
    is prepared (Workload.op_kernels); the openmmlab workload registers them, and its record
    says which implementation each op ran."""
