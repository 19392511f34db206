"""`harness show RUN_DIR`: pictures of what a run's model predicts, next to the ground truth.

Reads only the run's record.json, the predictions file it names (the record's
`predictions`, contract 3) and the dataset that file is scored against (its "ground_truth",
and the record's data source for the images). The drawer of the file's format comes from the
`harness_show_drawers` hook of the drawing plugins: light modules (no torch, no workload
import) that read the official submission formats directly, so `harness show` loads neither
the workload plugins nor torch. Built in: workloads/drawing/ (COCO results, TuSimple,
nuScenes detection, OpenLane-V2 submissions); others come from entry points of group
"harness.show". Needs matplotlib (the `report` extra).
"""
from __future__ import annotations

import argparse
import importlib
import math
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pluggy

from harness import hookspecs
from harness.errors import EXIT_OK, DatasetError, MissingExtra, UsageError
from harness.records import read_record
from harness.show_context import Drawer, ShowContext, restricted_pickle_load

__all__ = ["ShowContext", "VERBS", "drawers", "load_context", "render", "restricted_pickle_load"]

# The built-in drawing plugins (modules implementing harness_show_drawers), by name.
DRAWING_BUILTINS: tuple[str, ...] = ("workloads.drawing",)
DRAWING_ENTRY_POINT_GROUP = "harness.show"


def load_context(run: Path, n: int = 8, score_thr: float = 0.3) -> ShowContext:
    run_dir = run.parent if run.name == "record.json" else run
    rec_path = run_dir / "record.json"
    if not rec_path.is_file():
        raise UsageError(f"{rec_path}: no such file (harness show takes a run folder)")
    record = read_record(rec_path)
    info = record.predictions
    if not info or not info.get("path") or not info.get("format"):
        unevaluated = record.no_evaluation()
        if unevaluated is not None:
            raise UsageError(f"{rec_path}: {unevaluated}: nothing to show")
        raise UsageError(f"{rec_path}: the record names no predictions file (its `predictions` "
                         f"is absent; status {record.status!r}): nothing to show")
    path = Path(info["path"])
    path = path if path.is_absolute() else run_dir / path
    if not path.is_file():
        raise DatasetError(f"{rec_path}: predictions.path {info['path']!r}: no such file {path}")
    if n < 1:
        raise UsageError(f"--n must be >= 1, got {n}")
    return ShowContext(run_dir, record, info, path, n, score_thr)


def drawers() -> dict[str, Drawer]:
    """predictions format -> its drawer, from the drawing plugins only (a plugin manager of
    their own: the workload plugins, and torch with them, stay unloaded)."""
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    for name in DRAWING_BUILTINS:
        pm.register(importlib.import_module(name), name=name)
    for ep in metadata.entry_points(group=DRAWING_ENTRY_POINT_GROUP):
        if pm.has_plugin(ep.name):
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except (Exception, SystemExit) as exc:  # a broken plugin names itself, never vanishes
            raise UsageError(f"drawing plugin {ep.name!r} (entry point {ep.value}) failed to "
                             f"load: {exc!r}") from exc
    found: dict[str, Drawer] = {}
    for provided in reversed(pm.hook.harness_show_drawers()):  # registration order
        for fmt, draw in provided.items():
            if fmt in found and found[fmt] is not draw:
                raise UsageError(f"two drawing plugins draw predictions format {fmt!r}: "
                                 f"{found[fmt].__module__} and {draw.__module__}")
            found[fmt] = draw
    return found


def render(ctx: ShowContext, out: Path) -> tuple[Path, int]:
    """Draw ctx's samples into the PNG `out`; returns (out, samples drawn)."""
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra("harness show needs matplotlib: pip install 'perception-harness[report]'"
                           ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmt = ctx.info["format"]
    known = drawers()
    if fmt not in known:
        raise UsageError(f"{ctx.run_dir / 'record.json'}: predictions.format {fmt!r} has no "
                         f"drawer (known: {', '.join(sorted(known))})")
    fig, count = known[fmt](ctx)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out, count


def cmd_show(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.score_thr) and 0 <= args.score_thr <= 1):
        raise UsageError(f"--score-thr {args.score_thr}: a prediction score threshold in [0, 1]")
    if args.n < 1:
        raise UsageError(f"--n {args.n}: at least one sample to draw")
    ctx = load_context(args.run_dir, n=args.n, score_thr=args.score_thr)
    out = args.out or ctx.run_dir / "show.png"
    out, count = render(ctx, out)
    print(f"show: {out} ({count} {ctx.info.get('split', 'eval')} samples, {ctx.info['format']}; "
          f"predictions with score >= {ctx.score_thr:g})")
    return EXIT_OK


def add_show(sub: Any) -> None:
    p = sub.add_parser("show", help="draw a run's predictions next to the ground truth (PNG)",
                       description="Draws the predictions file of a run (record.json's "
                                   "'predictions') next to the ground truth on the first eval "
                                   "samples: 2D boxes (COCO), 3D boxes in BEV and the cameras "
                                   "(nuScenes), lanes and drivable masks (TuSimple), "
                                   "centerlines, traffic elements and topology (OpenLane-V2).")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder (or its record.json)")
    p.add_argument("--n", type=int, default=8, help="samples to draw (default 8)")
    p.add_argument("--out", type=Path, help="PNG to write (default RUN_DIR/show.png)")
    p.add_argument("--score-thr", type=float, default=0.3,
                   help="draw predictions scoring at least this (default 0.3)")
    p.set_defaults(func=cmd_show)


VERBS: list[Callable[[Any], None]] = [add_show]
