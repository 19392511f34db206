"""`harness check --update`: write records' measured values as reference rows.

Rows are written for the records' (scale, kind, configuration, backend, device, precision,
weights dtype, mode, world size); earlier rows of that key are replaced, every other row is
kept. Provenance comes from the command line that made the records.
"""
from __future__ import annotations

import csv
import io
import shlex
import statistics
from pathlib import Path
from typing import Sequence

from harness.atomic import atomic_write
from harness.checking import config_diff
from harness.comparable import row_differences, schedule_of
from harness.directions import metric_directions
from harness.errors import UsageError
from harness.records import Record
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
    """Write the whole table through the one atomic writer (harness/atomic.py)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(r.as_csv() for r in rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))


def command_of(record: Record) -> str:
    """The command that made the record: its argv, or rebuilt from the config when the run
    came from inside another program (pytest, a notebook)."""
    argv = list(record.env.get("argv") or [])
    if argv and Path(argv[0]).name == "harness":
        return shlex.join(["harness", *argv[1:]])
    run = record.run_config()
    parts = ["harness", "run", record.workload, "--backend", record.backend,
             "--precision", record.precision, "--scale", record.scale]
    if record.mode:
        parts.append(f"--{record.mode}")
    if record.emulated:
        parts.append("--emulate")
    if (record.world_size or 1) > 1:
        parts += ["--nproc", str(record.world_size)]
    for key, flag in (("steps", "--steps"), ("epochs", "--epochs"), ("seed", "--seed")):
        if run.get(key) is not None:
            parts += [flag, str(run[key])]
    for item in run.get("overrides") or []:
        parts += ["--set", str(item)]
    return shlex.join(parts) + " (rebuilt from the record's config)"


def _row_config(record: Record, existing: Sequence[RefRow]) -> str:
    """An existing row's configuration when the record fits it (keeps the keys that row
    pins, e.g. view_transform=lss), else the record's own configuration overrides."""
    for row in existing:
        if (row.scale == record.scale and row.kind == record_kind(record)
                and not config_diff(row, record) and not row_differences(row.settings, record, row.world_size)):
            return row.config
    config = record_overrides(record)
    if record.kind == "train":  # what it started from and, off the preset's, how long
        schedule = schedule_of(record) or {}
        if schedule.get("preset_steps") and schedule.get("optimizer_steps") != \
                schedule.get("preset_steps"):
            config = {"steps": str(schedule["optimizer_steps"]), **config}
        config = {"init": record.init(), **config}
    return format_config(config)


def measured_rows(records: Sequence[Record], existing: Sequence[RefRow],
                  with_perf: bool) -> tuple[list[RefRow], list[str]]:
    """Rows for the records' key, and the metrics left out for want of a direction."""
    first = records[0]
    directions = metric_directions(records, existing)
    emitted = list(first.metrics)
    names = [m for m in emitted if directions.get(m, ("", ""))[0]]
    names += ["fps", MEMORY_METRIC] if with_perf else []
    sha = first.env.get("git_sha") or "unknown commit"
    seeds = sorted({r.seed for r in records}, key=str)
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
            first.scale, record_kind(first), config, first.backend,
            record_device(first), first.precision, record_weights_dtype(first),
            str(first.mode), str(first.world_size or 1), name, mean,
            round(tol, 6), kind, direction, f"measured: {command_of(first)} @ {sha}; {how}"))
    return rows, [m for m in emitted if m not in names]


def update_tables(records: Sequence[Record], ref_dir: Path, with_perf: bool) -> list[str]:
    groups: dict[tuple[str, ...], list[Record]] = {}
    for rec in records:
        if rec.status != "ok":
            raise UsageError(f"{rec.path}: status '{rec.status}'; "
                             "reference values are only taken from ok runs")
        key: tuple[str, ...] = (rec.workload, rec.scale, record_kind(rec),
               format_config(record_overrides(rec)), rec.backend, record_device(rec),
               rec.precision, record_weights_dtype(rec), str(rec.mode),
               str(rec.world_size or 1))
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
