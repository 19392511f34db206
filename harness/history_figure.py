"""The history figure (matplotlib, Agg): one panel per value column of `harness history`
(metrics, samples/s, peak memory), commits along x in the order they were first measured,
one line per series (workload, scale, backend/precision); a change is a ringed point."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import MissingExtra

if TYPE_CHECKING:
    from harness.history import History


def figure(history: History, path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on CI runners and headless accelerator hosts
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtra("--figure needs matplotlib: "
                           "pip install 'perception-harness[report]'") from None
    commits = list(dict.fromkeys(row["commit"] for row in history.rows))
    at = {c: i for i, c in enumerate(commits)}
    columns = history.columns
    fig, axes = plt.subplots(len(columns), 1, figsize=(max(6.0, 1.1 * len(commits) + 3),
                                                       2.8 * len(columns)), squeeze=False)
    lines: dict[str, list[dict[str, Any]]] = {}
    for row in history.rows:
        name = f"{row['workload']} {row['scale']} {row['series']}"
        lines.setdefault(name, []).append(row)
    for ax, column in zip(axes[:, 0], columns, strict=True):
        for name, rows in lines.items():
            pts = [(at[r["commit"]], r[column], column in r["change"]) for r in rows
                   if r[column] is not None and r[column] == r[column]]
            if not pts:
                continue
            xs, ys, changed = zip(*pts, strict=True)
            drawn = ax.plot(xs, ys, marker="o", markersize=4, label=name)
            ax.scatter([x for x, c in zip(xs, changed, strict=True) if c],
                       [y for y, c in zip(ys, changed, strict=True) if c], s=140,
                       facecolors="none", edgecolors=drawn[0].get_color(), linewidths=1.8)
        ax.set_ylabel(column)
        values = [r[column] for r in history.rows if r[column] is not None and r[column] > 0]
        if values and max(values) > 20 * min(values):  # a GPU and a CPU line on one panel
            ax.set_yscale("log")
        ax.set_xticks(range(len(commits)), commits, rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title("results over time (ringed: a step beyond the noise)")
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
