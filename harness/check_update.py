"""`harness check --update`: write records' measured values as reference rows.

Rows are written for the records' (scale, kind, configuration, backend, device, precision,
weights dtype, mode, world size); earlier rows of that key are replaced, every other row is
kept. Provenance comes from the command line that made the records.
"""
from __future__ import annotations

import csv
import io
import os
import shlex
import statistics
import tempfile
from pathlib import Path
from typing import Any, Sequence

from harness.checking import config_diff
from harness.directions import metric_directions
from harness.errors import UsageError
from harness.reference import (
    COLUMNS,
    MEMORY_METRIC,
    RefRow,
    format_config,
    load_table,
    record_device,
    record_kind,
    record_overrides,
    record_value,
    record_weights_dtype,
    table_path,
)

# Tolerance of measured rows: max(3 x sample std over the runs, a floor). The floor keeps a
# lucky run of identical results from producing a zero band; a single run gets the floor.
ABS_FLOOR, REL_FLOOR = 0.01, 0.02
PERF_REL_FLOOR = {"fps": 0.25, MEMORY_METRIC: 0.10}  # shared CI hosts: speed is noisy


def write_table(path: Path, rows: Sequence[RefRow]) -> None:
    """Write the whole table atomically (temp file in the same folder, then rename)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(r.as_csv() for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a table is read by everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def command_of(record: dict[str, Any]) -> str:
    """The command that made the record: its argv, or rebuilt from the config when the run
    came from inside another program (pytest, a notebook)."""
    argv = list((record.get("env") or {}).get("argv") or [])
    if argv and Path(argv[0]).name == "harness":
        return shlex.join(["harness", *argv[1:]])
    run = (record.get("config") or {}).get("run") or {}
    parts = ["harness", "run", str(record.get("workload")), "--backend", str(record.get("backend")),
             "--precision", str(record.get("precision")), "--scale", str(record.get("scale"))]
    if record.get("mode"):
        parts.append(f"--{record['mode']}")
    if record.get("emulated"):
        parts.append("--emulate")
    if (record.get("world_size") or 1) > 1:
        parts += ["--nproc", str(record["world_size"])]
    for key, flag in (("steps", "--steps"), ("epochs", "--epochs"), ("seed", "--seed")):
        if run.get(key) is not None:
            parts += [flag, str(run[key])]
    for item in run.get("overrides") or []:
        parts += ["--set", str(item)]
    return shlex.join(parts) + " (rebuilt from the record's config)"


def _row_config(record: dict[str, Any], existing: Sequence[RefRow]) -> str:
    """An existing row's configuration when the record fits it (keeps the keys that row
    pins, e.g. view_transform=lss), else the record's own configuration overrides."""
    for row in existing:
        if (row.scale == record.get("scale") and row.kind == record_kind(record)
                and not config_diff(row, record)):
            return row.config
    return format_config(record_overrides(record))


def measured_rows(records: Sequence[dict[str, Any]], existing: Sequence[RefRow],
                  with_perf: bool) -> tuple[list[RefRow], list[str]]:
    """Rows for the records' key, and the metrics left out for want of a direction."""
    first = records[0]
    directions = metric_directions(records, existing)
    emitted = list(first.get("metrics") or {})
    names = [m for m in emitted if directions.get(m, ("", ""))[0]]
    names += ["fps", MEMORY_METRIC] if with_perf else []
    sha = (first.get("env") or {}).get("git_sha") or "unknown commit"
    seeds = sorted({r.get("seed") for r in records}, key=str)
    config = _row_config(first, existing)
    rows: list[RefRow] = []
    for name in names:
        values = [v for v, _ in (record_value(r, name) for r in records) if v is not None]
        if not values:
            continue
        mean = statistics.fmean(values)
        spread = 3 * statistics.stdev(values) if len(values) > 1 else 0.0
        if name in PERF_REL_FLOOR:  # speed/memory: relative, they scale with the hardware
            kind, tol = "rel", max(spread / abs(mean) if mean else 0.0, PERF_REL_FLOOR[name])
            floor = f"{PERF_REL_FLOOR[name]:.0%}"
        else:
            kind, tol = "abs", max(spread, ABS_FLOOR, REL_FLOOR * abs(mean))
            floor = f"max({ABS_FLOOR:g}, {REL_FLOOR:.0%} of value)"
        how = (f"n={len(values)} runs (seeds {', '.join(map(str, seeds))}), tolerance = "
               f"max(3 x std, floor {floor})" if len(values) > 1
               else f"single run, tolerance = floor {floor}")
        direction = directions.get(name, ("higher" if name == "fps" else "lower", ""))[0]
        rows.append(RefRow(
            str(first.get("scale")), record_kind(first), config, str(first.get("backend")),
            record_device(first), str(first.get("precision")), record_weights_dtype(first),
            str(first.get("mode")), str(first.get("world_size") or 1), name, mean,
            round(tol, 6), kind, direction, f"measured: {command_of(first)} @ {sha}; {how}"))
    return rows, [m for m in emitted if m not in names]


def update_tables(records: Sequence[dict[str, Any]], ref_dir: Path, with_perf: bool) -> list[str]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for rec in records:
        if rec.get("status") != "ok":
            raise UsageError(f"{rec.get('_path')}: status '{rec.get('status')}'; "
                             "reference values are only taken from ok runs")
        key: tuple[str, ...] = (str(rec.get("workload")), str(rec.get("scale")), record_kind(rec),
               format_config(record_overrides(rec)), str(rec.get("backend")), record_device(rec),
               str(rec.get("precision")), record_weights_dtype(rec), str(rec.get("mode")),
               str(rec.get("world_size") or 1))
        groups.setdefault(key, []).append(rec)
    done = []
    for key, recs in groups.items():
        path = table_path(key[0], ref_dir)
        existing = load_table(path) if path.exists() else []
        new, skipped = measured_rows(recs, existing, with_perf)
        if not new:
            raise UsageError(f"nothing to write for {key[0]}: no direction is known for "
                             f"{', '.join(skipped) or 'any metric'}")
        replaced = {(r.scale, *r.group, r.metric) for r in new}
        kept = [r for r in existing if (r.scale, *r.group, r.metric) not in replaced]
        write_table(path, kept + new)
        shown = "/".join(k or "defaults" for k in key[1:])
        done.append(f"updated {path}: {len(new)} rows for {shown} from {len(recs)} run(s)"
                    + (f"; no direction known, not written: {', '.join(skipped)}"
                       if skipped else ""))
    return done
