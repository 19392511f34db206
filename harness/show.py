"""`harness show RUN_DIR`: pictures of what a run's model predicts, next to the ground truth.

Reads only the run's record.json, the predictions file it names (record["predictions"],
contract 3) and the dataset that file is scored against (its "ground_truth", and
record["data"]["source"] for the images). Loads no plugin and no torch: the drawers read the
official submission formats directly (harness/show_draw.py: COCO results and TuSimple;
harness/show_nuscenes.py: nuScenes detection through nuscenes-devkit's geometry;
harness/show_openlanev2.py: OpenLane-V2 submissions). Needs matplotlib (the `report` extra).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any, Callable

from harness.errors import EXIT_OK, DatasetError, MissingExtra, UsageError

__all__ = ["ShowContext", "VERBS", "load_context", "render", "restricted_pickle_load"]


@dataclasses.dataclass(frozen=True)
class ShowContext:
    """What a drawer gets: the run, its predictions file and the options."""

    run_dir: Path
    record: dict[str, Any]
    info: dict[str, Any]  # record["predictions"]
    path: Path            # the predictions file, absolute
    n: int
    score_thr: float

    @property
    def data_root(self) -> Path | None:
        """The dataset root the run read (record["data"]["source"], "synthetic:" stripped)."""
        source = (self.record.get("data") or {}).get("source")
        if not isinstance(source, str) or not source:
            return None
        return Path(source.split(":", 1)[1] if source.startswith("synthetic:") else source)

    def resolve(self, value: str) -> Path:
        """A path from the record: absolute as written, or relative to the run folder."""
        p = Path(value)
        return p if p.is_absolute() else self.run_dir / p


def load_context(run: Path, n: int = 8, score_thr: float = 0.3) -> ShowContext:
    run_dir = run.parent if run.name == "record.json" else run
    rec_path = run_dir / "record.json"
    if not rec_path.is_file():
        raise UsageError(f"{rec_path}: no such file (harness show takes a run folder)")
    try:
        record = json.loads(rec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{rec_path}: not a readable JSON record ({exc})") from None
    info = record.get("predictions")
    if not isinstance(info, dict) or not info.get("path") or not info.get("format"):
        why = record.get("status")
        raise UsageError(f"{rec_path}: the record names no predictions file (record['predictions'] "
                         f"is absent; status {why!r}): nothing to show")
    path = Path(info["path"])
    path = path if path.is_absolute() else run_dir / path
    if not path.is_file():
        raise DatasetError(f"{rec_path}: predictions.path {info['path']!r}: no such file {path}")
    if n < 1:
        raise UsageError(f"--n must be >= 1, got {n}")
    return ShowContext(run_dir, record, info, path, n, score_thr)


def _drawers() -> dict[str, Callable[[ShowContext], Any]]:
    from harness.show_draw import draw_coco, draw_tusimple
    from harness.show_nuscenes import draw_nuscenes
    from harness.show_openlanev2 import draw_openlanev2

    return {"coco-results": draw_coco, "tusimple": draw_tusimple,
            "nuscenes-detection": draw_nuscenes, "openlanev2-submission": draw_openlanev2}


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
    drawers = _drawers()
    if fmt not in drawers:
        raise UsageError(f"{ctx.run_dir / 'record.json'}: predictions.format {fmt!r} has no "
                         f"drawer (known: {', '.join(sorted(drawers))})")
    fig, count = drawers[fmt](ctx)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out, count


def restricted_pickle_load(path: Path) -> Any:
    """A pickle of plain containers and numpy arrays only: a submission or ground-truth file
    received from someone else must not run code when it is read."""
    allowed = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
               ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex")}

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in allowed:
                return super().find_class(module, name)
            raise DatasetError(f"{path}: the pickle needs {module}.{name}, which is neither a "
                               "plain container nor a numpy array; not loaded")

    try:
        with open(path, "rb") as f:
            return _Restricted(f).load()
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read the pickle ({exc})") from None


def cmd_show(args: argparse.Namespace) -> int:
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
