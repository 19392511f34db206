"""The parity figure (matplotlib, Agg): loss curves, the primary metric against the
baseline's tolerance band, throughput and peak memory; one colour per backend.

Emulated runs' speed and memory bars are drawn at their measured value, hatched: they show
that the run happened, not how fast a device is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import MissingExtra
from harness.parity import PERF, Parity
from harness.records import Record
from harness.reference import MEMORY_METRIC, record_value

BACKEND_COLOURS = {"cuda": "#2ca02c", "npu": "#d62728", "hpu": "#1f77b4", "cpu": "#7f7f7f",
                   "onnxruntime": "#9467bd"}
_SPARE = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def colours(records: list[Record]) -> list[str]:
    known = dict(BACKEND_COLOURS)
    out = []
    for rec in records:
        backend = rec.backend
        if backend not in known:
            known[backend] = _SPARE[(len(known) - len(BACKEND_COLOURS)) % len(_SPARE)]
        out.append(known[backend])
    return out


def measured(record: Record, metric: str) -> float | None:
    """The value as measured, even where it is not meaningful (emulated devices)."""
    if metric == "fps":
        v = record.throughput.get("samples_per_s")
    elif metric == MEMORY_METRIC:
        mem = record.memory
        v = next((mem[k] for k in ("device_peak_allocated_bytes", "device_peak_reserved_bytes",
                                   "host_peak_rss_bytes") if mem.get(k) is not None), None)
    else:
        v = record_value(record, metric)[0]
    return None if v is None else float(v)


def _bars(ax: Any, p: Parity, metric: str, cols: list[str], scale: float) -> None:
    for i, rec in enumerate(p.records):
        v = measured(rec, metric)
        emulated = rec.emulated and metric in PERF
        height = 0.0 if v is None else v * scale
        bar = ax.bar(i, height, color=cols[i], alpha=0.45 if emulated else 0.9,
                     hatch="//" if emulated else None, edgecolor="black" if emulated else cols[i])
        text = "n/a" if v is None else (f"{height:,.0f}" if height >= 100 else f"{height:.3g}")
        ax.annotate(text + (" (emulated)" if emulated else ""),
                    (bar[0].get_x() + bar[0].get_width() / 2, height), ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(range(len(p.labels)), p.labels, fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def draw(p: Parity) -> Any:
    """The matplotlib Figure: loss, primary metric, throughput, memory (axes in that order)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on CI runners and headless accelerator hosts
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise MissingExtra("--figure needs matplotlib: "
                           "pip install 'perception-harness[report]'") from None
    cols = colours(p.records)
    fig, ((ax_loss, ax_acc), (ax_fps, ax_mem)) = plt.subplots(2, 2, figsize=(12, 8))
    styles = ("-", "--", ":", "-.")
    for i, (label, rec) in enumerate(zip(p.labels, p.records, strict=True)):
        pts = [(r["step"], r["loss"]) for r in rec.losses
               if isinstance(r.get("loss"), (int, float))]
        if pts:  # distinct dashes keep identical curves (true parity) visible
            ax_loss.plot(*zip(*pts, strict=True), linestyle=styles[i % len(styles)], marker="o",
                         markersize=3, linewidth=max(2.6 - 0.5 * i, 1.0), color=cols[i],
                         label=label)
    ax_loss.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    primary = next((m for m in p.metrics if m not in PERF), None)
    if primary is not None:
        # Points, not bars from zero: the question is whether each run sits inside the band.
        for i, rec in enumerate(p.records):
            v = measured(rec, primary)
            if v is not None:
                ax_acc.scatter([i], [v], s=90, color=cols[i], zorder=3)
                ax_acc.annotate(f"{v:.4g}", (i, v), textcoords="offset points", xytext=(0, 8),
                                ha="center", fontsize=8)
        ax_acc.set_xticks(range(len(p.labels)), p.labels, fontsize=9)
        ax_acc.set_xlim(-0.6, len(p.labels) - 0.4)
        ax_acc.grid(axis="y", alpha=0.3)
        base = measured(p.records[0], primary)
        if base is not None:
            width = p.tol[primary].width(base)
            ax_acc.axhspan(base - width, base + width, color="#999999", alpha=0.25,
                           label=f"baseline ± tolerance ({width:.3g})")
            shown = [v for v in (measured(r, primary) for r in p.records) if v is not None]
            lo, hi = min(*shown, base - width), max(*shown, base + width)
            pad = 0.2 * (hi - lo) or 0.01
            ax_acc.set_ylim(lo - pad, hi + 2 * pad)  # room for labels and the legend
            ax_acc.legend(fontsize=8, loc="upper right")
        ax_acc.set(title=f"{primary} (primary metric)")
    else:
        ax_acc.set_axis_off()
    _bars(ax_fps, p, "fps", cols, 1.0)
    ax_fps.set(title="training throughput (samples/s)", ylabel="samples/s")
    _bars(ax_mem, p, MEMORY_METRIC, cols, 2**-20)
    ax_mem.set(title="peak memory (MiB)", ylabel="MiB")
    by_backend = dict(zip((r.backend for r in p.records), colours(p.records), strict=True))
    handles = [Patch(color=c, label=b) for b, c in by_backend.items()]
    if any(r.emulated for r in p.records):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//",
                             label="emulated device: speed/memory not meaningful"))
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncol=len(handles))
    fig.suptitle(p.title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def figure(p: Parity, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = draw(p)
    path = Path(path)
    if path.is_dir():  # a folder: the figure goes inside it, and the caller says where
        path = path / "parity.png"
    elif not path.suffix:  # matplotlib would append .png itself: name the file it writes
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
