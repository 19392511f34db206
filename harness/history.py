"""`harness history RECORDS_OR_DIRS...`: results over time. One row per commit (the record's
`env.git_sha`) and series (workload, scale, backend/precision/mode, world size), in the order
the commits were first measured (`started_at`): the mean of each metric, samples/s and peak
memory over that commit's ok runs, and a change marker where a value steps beyond the noise.

A step beyond the noise: the commit's mean is further from the mean of the series' runs since
its last change than max(3 x their standard deviation, CHANGE_FLOOR x their mean), with at
least two such runs (one run has no spread to judge). The next change is measured from there.

Reads records only (no torch, no plugin); pandas (the `report` extra) groups them.
"""
from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from harness.errors import EXIT_OK, MissingExtra, UsageError
from harness.records import Record
from harness.reference import MEMORY_METRIC, load_records, record_value

FPS, MEMORY = "samples/s", "peak MiB"
CHANGE_FLOOR = 0.05  # relative: a 2% wobble of identical runs is not a change
FORMATS = {"md": "md", "markdown": "md", "csv": "csv", "html": "html"}


def short_sha(record: Record) -> str:
    sha = str(record.env.get("git_sha") or "unknown")
    dirty = sha.endswith("-dirty")
    return sha.removesuffix("-dirty")[:10] + ("+dirty" if dirty else "")


def series_of(record: Record) -> str:
    parts = [record.backend, record.precision]
    if record.mode and record.mode != "eager":
        parts.append(record.mode)
    label = "/".join(parts)
    return label + (f" x{record.world_size}" if (record.world_size or 1) > 1 else "")


def _since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: not a date (YYYY-MM-DD or an ISO time)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _started(record: Record) -> datetime:
    try:
        return _since(record.started_at or "")
    except UsageError:
        return datetime.min.replace(tzinfo=timezone.utc)


@dataclass
class History:
    """The table: `columns` are the value columns (metrics, then samples/s and peak MiB)."""

    rows: list[dict[str, Any]]
    columns: list[str]
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["change"]]


def _select(records: list[Record], workload: str | None, backend: str | None,
            since: str | None) -> tuple[list[Record], dict[str, int]]:
    left: dict[str, int] = {}
    keep = []
    moment = _since(since) if since else None
    for r in records:
        why = ("status " + r.status if r.status != "ok"
               else "other workload" if workload and r.workload not in workload.split(",")
               else "other backend" if backend and r.backend not in backend.split(",")
               else "before --since" if moment and _started(r) < moment else "")
        if why:
            left[why] = left.get(why, 0) + 1
        else:
            keep.append(r)
    return keep, left


def _metrics(records: list[Record], wanted: str | None) -> list[str]:
    if wanted:
        return [m.strip() for m in wanted.split(",") if m.strip()]
    primary = list(dict.fromkeys(r.primary_metric for r in records if r.primary_metric))
    if primary:
        return primary
    return list(dict.fromkeys(m for r in records for m in r.metrics))[:3]


def _value(record: Record, column: str) -> float | None:
    if column == FPS:
        return record_value(record, "fps")[0]
    if column == MEMORY:
        v = record_value(record, MEMORY_METRIC)[0]
        return None if v is None else v / 2**20
    v = record_value(record, column)[0]
    return None if v is None or v != v else v


def build(records: list[Record], workload: str | None = None, backend: str | None = None,
          metric: str | None = None, since: str | None = None) -> History:
    """The history table of these records (pandas groups them by series and commit)."""
    try:
        import pandas as pd
    except ImportError:
        raise MissingExtra("harness history needs pandas: "
                           "pip install 'perception-harness[report]'") from None
    chosen, left = _select(records, workload, backend, since)
    if not chosen:
        raise UsageError("harness history: no ok record left to show"
                         + (f" (left out: {_left_text(left)})" if left else ""))
    columns = [*_metrics(chosen, metric), FPS, MEMORY]
    frame = pd.DataFrame([{"workload": r.workload, "scale": r.scale, "series": series_of(r),
                           "commit": short_sha(r), "started": _started(r),
                           **{c: _value(r, c) for c in columns}} for r in chosen])
    keys = ["workload", "scale", "series", "commit"]
    grouped = frame.groupby(keys, sort=False, dropna=False)
    table = grouped.agg(started=("started", "min"), runs=("started", "size"),
                        **{c: (c, "mean") for c in columns}).reset_index()
    table = table.sort_values(["started", *keys], kind="stable")
    runs = {k: {c: [v for v in g[c].tolist() if v == v] for c in columns}
            for k, g in grouped}
    rows = [dict(row) for row in table.to_dict("records")]
    _mark_changes(rows, runs, columns)
    return History(rows, columns, left)


def _mark_changes(rows: list[dict[str, Any]], runs: dict[tuple[Any, ...], dict[str, list[float]]],
                  columns: list[str]) -> None:
    """Fill each row's `change` (text, '' for none) in its series' commit order."""
    baseline: dict[tuple[Any, ...], list[float]] = {}
    for row in rows:
        row["change"] = ""
        marks = []
        for column in columns:
            series = (row["workload"], row["scale"], row["series"], column)
            values = runs[(row["workload"], row["scale"], row["series"], row["commit"])][column]
            before = baseline.setdefault(series, [])
            if values and len(before) >= 2:
                mean = statistics.fmean(before)
                tolerance = max(3 * statistics.stdev(before), CHANGE_FLOOR * abs(mean))
                now = statistics.fmean(values)
                if abs(now - mean) > tolerance:
                    marks.append(f"{column} {now / mean - 1:+.1%}" if mean else column)
                    baseline[series] = before = []
            before.extend(values)
        row["change"] = "; ".join(marks)


def _left_text(left: dict[str, int]) -> str:
    return ", ".join(f"{n}x {why}" for why, n in left.items())


def _cell(value: Any, column: str = "") -> str:
    if value is None or value != value:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if column in (FPS, MEMORY) else f"{value:.4g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


HEAD = ["started", "commit", "workload", "scale", "series", "runs"]


def cells(h: History) -> tuple[list[str], list[list[str]]]:
    header = [*HEAD, *h.columns, "change"]
    return header, [[_cell(row[c], c) for c in header] for row in h.rows]


def render(h: History, fmt: str, figure: Path | None = None) -> str:
    from harness.parity_render import _STYLE, _html_table, _md_table

    header, rows = cells(h)
    kind = FORMATS[fmt]
    if kind == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[row[c] for c in header] for row in h.rows])
        return buf.getvalue()
    if kind == "md":
        return _md_table(header, rows)
    body = ["<h1>Results over time</h1>", _html_table(header, rows)]
    if figure is not None:
        import base64

        data = base64.b64encode(Path(figure).read_bytes()).decode("ascii")
        body.append(f'<p><img alt="history figure" src="data:image/png;base64,{data}"></p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>Results over time</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def cmd_history(args: argparse.Namespace) -> int:
    history = build(load_records(args.records), args.workload, args.backend, args.metric,
                    args.since)
    if args.figure:
        from harness.history_figure import figure

        print(f"wrote {figure(history, args.figure)}", file=sys.stderr)
    print(render(history, args.format, args.figure), end="" if args.format == "csv" else "\n")
    if history.left_out:
        print(f"harness history: left out {_left_text(history.left_out)}", file=sys.stderr)
    return EXIT_OK


def add_history(sub: Any) -> None:
    p = sub.add_parser("history", help="metric, samples/s and peak memory per commit and "
                                       "backend, over time (table, figure)")
    p.add_argument("records", nargs="+", type=Path, metavar="RECORD_OR_DIR",
                   help="record.json files, run folders, or folders to search")
    p.add_argument("--workload", metavar="W[,W]", help="only these workloads")
    p.add_argument("--backend", metavar="B[,B]", help="only these backends")
    p.add_argument("--metric", metavar="M[,M]",
                   help="metrics to show (default: each workload's primary metric)")
    p.add_argument("--since", metavar="DATE", help="only records started on or after this "
                                                   "date (YYYY-MM-DD, or an ISO time; UTC)")
    p.add_argument("--format", default="md", choices=sorted(FORMATS),
                   help="md (default), csv, or html (a complete page, with --figure inline)")
    p.add_argument("--figure", type=Path, metavar="PNG",
                   help="one panel per metric, one line per backend/precision, changes marked")
    p.set_defaults(func=cmd_history)


VERBS: list[Callable[[Any], None]] = [add_history]
