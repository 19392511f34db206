"""Parity tables (pandas) and figures (matplotlib, Agg) across runs of one workload and scale.

One row per record; the first record is the baseline. Every metric gets its delta to the
baseline and a verdict under a tolerance taken from the reference table when that table has
a row for the metric (matched to the baseline record), else a default relative tolerance;
the tolerance table printed with the parity table says which, per metric.
Numerical (per-step, per-gradient) parity lives in harness/numerics.py.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Sequence

from harness.errors import MissingExtra, UsageError
from harness.reference import MEMORY_METRIC, record_value

DEFAULT_REL_TOL = {"metric": 0.02, "fps": 0.10, MEMORY_METRIC: 0.10}
# Metrics near zero (an error rate of 0) would get a zero band from a relative rule alone.
DEFAULT_ABS_FLOOR = 1e-3


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise MissingExtra("harness parity needs pandas: "
                           "pip install 'perception-harness[report]'") from None
    return pd


def _labels(records: Sequence[dict[str, Any]]) -> list[str]:
    """Run folder names, made unique (two runs may share a folder name in different trees)."""
    out: list[str] = []
    for rec in records:
        p = Path(str(rec.get("_path", "run")))
        name = p.parent.name if p.name == "record.json" else p.stem
        out.append(name if name not in out else f"{name}#{len(out)}")
    return out


def _directions(workload: str, records: Sequence[dict[str, Any]]) -> dict[str, str]:
    try:
        from harness import plugins

        return dict(plugins.get_workload(workload).metrics)
    except Exception:  # noqa: BLE001 - a report must render even if the plugin is not installed
        return {}


def _metric_names(records: Sequence[dict[str, Any]], directions: dict[str, str]) -> list[str]:
    seen = [m for m in directions if any(m in (r.get("metrics") or {}) for r in records)]
    for rec in records:
        seen += [m for m in (rec.get("metrics") or {}) if m not in seen]
    return seen


def _tolerances(base: dict[str, Any], names: list[str], directions: dict[str, str],
                ref_dir: Path | None) -> dict[str, dict[str, Any]]:
    """metric -> {band, direction, source}; reference rows first, then the defaults."""
    rows = {}
    if ref_dir is not None:
        from harness.checking import find_match

        match, _ = find_match(base, ref_dir)
        if match is not None:
            rows = {r.metric: r for r in match.rows}
            rows.setdefault("fps", rows.get("samples_per_s"))
    out: dict[str, dict[str, Any]] = {}
    for name in [*names, "fps", MEMORY_METRIC]:
        row = rows.get(name)
        if row is not None:
            band = row.tolerance if row.tolerance_kind == "abs" else None
            out[name] = {"band": band, "rel": None if band is not None else row.tolerance,
                         "direction": row.direction,
                         "source": f"reference {Path(row.file).name}:{row.line} "
                                   f"({row.tolerance_kind} {row.tolerance:g}; {row.source})"}
            continue
        rel = DEFAULT_REL_TOL.get(name, DEFAULT_REL_TOL["metric"])
        direction = {"fps": "higher", MEMORY_METRIC: "lower"}.get(name, directions.get(name, ""))
        floor = DEFAULT_ABS_FLOOR if name not in ("fps", MEMORY_METRIC) else 0.0
        out[name] = {"band": None, "rel": rel, "floor": floor, "direction": direction,
                     "source": f"default: {rel:.0%} of the baseline value"
                               + (f" (at least {floor:g})" if floor else "")}
    return out


def _verdict(value: float | None, base: float | None, tol: dict[str, Any]) -> str:
    if value is None or base is None or math.isnan(value) or math.isnan(base):
        return "n/a"
    band = (tol["band"] if tol["band"] is not None
            else max(tol["rel"] * abs(base), tol.get("floor", 0.0)))
    delta = value - base
    if abs(delta) <= band:
        return "ok"
    if not tol["direction"]:
        return "DIFFERS"
    better = delta > 0 if tol["direction"] == "higher" else delta < 0
    return "better" if better else "WORSE"


def parity_frames(records: Sequence[dict[str, Any]],
                  ref_dir: Path | None = None) -> tuple[Any, Any]:
    """(parity table, tolerance table) as DataFrames; records[0] is the baseline."""
    pd = _pandas()
    if not records:
        raise UsageError("harness parity needs at least one record")
    kinds = {(r.get("workload"), r.get("scale")) for r in records}
    if len(kinds) > 1:
        listed = ", ".join(f"{w}/{s}" for w, s in sorted(kinds, key=str))
        raise UsageError(f"parity compares runs of one workload and scale; got {listed}")
    base = records[0]
    workload = str(base.get("workload"))
    directions = _directions(workload, records)
    names = _metric_names(records, directions)
    tols = _tolerances(base, names, directions, ref_dir)
    rows = []
    for label, rec in zip(_labels(records), records, strict=False):
        row: dict[str, Any] = {
            "run": label, "backend": rec.get("backend"), "mode": rec.get("mode"),
            "precision": rec.get("precision"), "world_size": rec.get("world_size"),
            "emulated": bool(rec.get("emulated")), "status": rec.get("status")}
        for name in [*names, "fps", MEMORY_METRIC]:
            value, _ = record_value(rec, name)
            base_value, _ = record_value(base, name)
            shown = name if name != MEMORY_METRIC else "peak_mem_MiB"
            scale = 2**-20 if name == MEMORY_METRIC else 1.0
            row[shown] = None if value is None else value * scale
            row[f"{shown} Δ"] = (None if value is None or base_value is None
                                 else (value - base_value) * scale)
            row[f"{shown} verdict"] = ("baseline" if rec is base
                                       else _verdict(value, base_value, tols[name]))
        rows.append(row)
    table = pd.DataFrame(rows)
    tol_table = pd.DataFrame([{"metric": n, "direction": t["direction"] or "?",
                               "tolerance": (f"±{t['band']:g}" if t["band"] is not None
                                             else f"±{t['rel']:.0%}"),
                               "source": t["source"]} for n, t in tols.items()])
    return table, tol_table


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(df: Any) -> str:
    """Pipe table without the tabulate dependency that DataFrame.to_markdown needs."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in rec) + " |")
    return "\n".join(lines)


def render(records: Sequence[dict[str, Any]], fmt: str = "markdown",
           ref_dir: Path | None = None) -> str:
    table, tols = parity_frames(records, ref_dir)
    base = records[0]
    title = (f"Parity: {base.get('workload')} ({base.get('scale')}), "
             f"baseline {table['run'].iloc[0]}")
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "html":
        return (f"<h2>{html.escape(title)}</h2>\n" + table.to_html(index=False, na_rep="-")
                + "\n<h3>Tolerances</h3>\n" + tols.to_html(index=False) + "\n")
    if fmt == "markdown":
        return f"## {title}\n\n{to_markdown(table)}\n\n### Tolerances\n\n{to_markdown(tols)}\n"
    raise UsageError(f"unknown format {fmt!r} (valid: markdown, csv, html)")


def figure(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Loss curves overlaid, plus FPS and peak-memory bars, in one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on CI runners and headless accelerator hosts
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtra("--figure needs matplotlib: "
                           "pip install 'perception-harness[report]'") from None
    labels = [f"{lab} ({r.get('backend')} {r.get('precision')})"
              for lab, r in zip(_labels(records), records, strict=False)]
    fig, (ax_loss, ax_fps, ax_mem) = plt.subplots(
        1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [2, 1, 1]})
    styles = ("-", "--", ":", "-.")
    for i, (label, rec) in enumerate(zip(labels, records, strict=False)):
        pts = [(r["step"], r["loss"]) for r in rec.get("losses") or []
               if isinstance(r.get("loss"), (int, float))]
        if pts:  # distinct dashes and widths keep identical curves (true parity) visible
            ax_loss.plot(*zip(*pts, strict=False), linestyle=styles[i % len(styles)], marker="o",
                         markersize=3, linewidth=max(2.8 - 0.5 * i, 1.0), label=label)
    ax_loss.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    for ax, name, unit in ((ax_fps, "fps", "samples/s"), (ax_mem, MEMORY_METRIC, "MiB")):
        values = [record_value(r, name)[0] for r in records]
        scale = 2**-20 if name == MEMORY_METRIC else 1.0
        heights = [0.0 if v is None else v * scale for v in values]
        bars = ax.bar(range(len(labels)), heights, color="tab:blue")
        for bar, v, rec in zip(bars, values, records, strict=False):
            if rec.get("emulated"):
                bar.set_hatch("//")
                bar.set_color("tab:gray")
            shown = "n/a" if v is None else (f"{v * scale:,.0f}" if v * scale >= 100
                                             else f"{v * scale:.3g}")
            ax.annotate(shown,
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set(title=f"{'throughput' if name == 'fps' else 'peak memory'} ({unit})", ylabel=unit)
    base = records[0]
    note = (" — hatched grey bars: emulated device, speed/memory not meaningful"
            if any(r.get("emulated") for r in records) else "")
    fig.suptitle(f"{base.get('workload')} ({base.get('scale')}), baseline {labels[0]}{note}",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
