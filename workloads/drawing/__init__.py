"""Drawers for `harness show`, one module per official predictions format, shared by the
workloads that write that format. A drawing plugin: no torch and no workload import (show
loads it alone). Workloads name their format in write_predictions()'s "format"."""
from __future__ import annotations

from harness import hookimpl
from harness.show_context import Drawer
from workloads.drawing.coco import draw_coco
from workloads.drawing.nuscenes import draw_nuscenes
from workloads.drawing.openlanev2 import draw_openlanev2
from workloads.drawing.tusimple import draw_tusimple


@hookimpl
def harness_show_drawers() -> dict[str, Drawer]:
    return {"coco-results": draw_coco, "tusimple": draw_tusimple,
            "nuscenes-detection": draw_nuscenes, "openlanev2-submission": draw_openlanev2}
