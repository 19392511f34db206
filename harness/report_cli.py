"""The report verbs of `harness`: check, parity, gate (loaded by harness/cli.py via VERBS).

Each `add(subparsers)` adds one verb; its func returns the exit code (0 ok, 1 failed).
`check --update` lives here because its provenance comes from the command line that made
the records; the matching and comparing live in harness/reference.py.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.errors import EXIT_FAILED, EXIT_OK, UsageError
from harness.reference import (
    COLUMNS,
    MEMORY_METRIC,
    CheckResult,
    RefRow,
    check_record,
    load_records,
    load_table,
    record_device,
    record_value,
    reference_dir,
    table_path,
)

# Tolerance of measured rows: max(3 x sample std over the runs, a floor). The floor keeps a
# lucky run of identical results from producing a zero band; a single run gets the floor.
ABS_FLOOR, REL_FLOOR = 0.01, 0.02
PERF_REL_FLOOR = {"fps": 0.25, MEMORY_METRIC: 0.10}  # shared CI hosts: speed is noisy


# ----------------------------------------------------------------------------- check
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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _render_check(res: CheckResult) -> str:
    rec = res.record
    lines = [f"record: {rec.get('_path')} ({rec.get('workload')} {rec.get('scale')}, "
             f"{rec.get('backend')} {rec.get('precision')} {rec.get('mode')} "
             f"ws={rec.get('world_size')}, status {rec.get('status')})"]
    if res.match is None:
        return "\n".join([*lines, f"  {res.summary}", "  result: FAIL (no matching row)"])
    lines.append(f"  matched: {res.match.describe()}")
    lines.append(f"  source: {res.match.rows[0].source}")
    head = ("metric", "measured", "reference", "tolerance", "direction", "verdict")
    rows = [(v.metric, "-" if v.measured is None else f"{v.measured:.6g}", f"{v.row.value:.6g}",
             f"±{v.row.tolerance:g} ({v.row.tolerance_kind})", v.row.direction,
             v.status + (f" ({v.note})" if v.note and v.status != "pass" else ""))
            for v in res.verdicts]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    for r in [head, *rows]:
        cells = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False))
        lines.append(("  " + cells).rstrip())
    lines.append("  result: PASS" if res.passed else f"  result: FAIL ({res.summary})")
    return "\n".join(lines)


def _command(record: dict[str, Any]) -> str:
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


def _directions(workload: str, existing: Sequence[RefRow]) -> dict[str, str]:
    out = {r.metric: r.direction for r in existing}
    try:
        from harness import plugins

        out.update(plugins.get_workload(workload).metrics)
    except UsageError:
        pass  # workload not installed here: fall back to the table's own directions
    out.update({"fps": "higher", MEMORY_METRIC: "lower"})
    return out


def measured_rows(records: Sequence[dict[str, Any]], existing: Sequence[RefRow],
                  with_perf: bool) -> tuple[list[RefRow], list[str]]:
    """Rows for the records' (scale, backend, device, precision, mode, world_size), and the
    metrics left out because no direction is declared for them (by the workload or table)."""
    first = records[0]
    directions = _directions(str(first.get("workload")), existing)
    emitted = list(first.get("metrics") or {})
    names = [m for m in emitted if m in directions]
    names += ["fps", MEMORY_METRIC] if with_perf else []
    sha = (first.get("env") or {}).get("git_sha") or "unknown commit"
    seeds = sorted({r.get("seed") for r in records}, key=str)
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
        rows.append(RefRow(str(first.get("scale")), str(first.get("backend")), record_device(first),
                           str(first.get("precision")), str(first.get("mode")),
                           str(first.get("world_size") or 1), name, mean, round(tol, 6), kind,
                           directions[name], f"measured: {_command(first)} @ {sha}; {how}"))
    return rows, [m for m in emitted if m not in directions]


def update_tables(records: Sequence[dict[str, Any]], ref_dir: Path, with_perf: bool) -> list[str]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for rec in records:
        if rec.get("status") != "ok":
            raise UsageError(f"{rec.get('_path')}: status '{rec.get('status')}'; "
                             "reference values are only taken from ok runs")
        key = (str(rec.get("workload")), str(rec.get("scale")), str(rec.get("backend")),
               record_device(rec), str(rec.get("precision")), str(rec.get("mode")),
               str(rec.get("world_size") or 1))
        groups.setdefault(key, []).append(rec)
    done = []
    for key, recs in groups.items():
        path = table_path(key[0], ref_dir)
        existing = load_table(path) if path.exists() else []
        new, skipped = measured_rows(recs, existing, with_perf)
        if not new:
            raise UsageError(f"nothing to write for {key[0]}: no direction is declared for "
                             f"{', '.join(skipped) or 'any metric'} (is the workload installed?)")
        replaced = {(r.scale, *r.group, r.metric) for r in new}
        kept = [r for r in existing if (r.scale, *r.group, r.metric) not in replaced]
        write_table(path, kept + new)
        done.append(f"updated {path}: {len(new)} rows for {'/'.join(key[1:])} "
                    f"from {len(recs)} run(s)"
                    + (f"; no direction declared, not written: {', '.join(skipped)}"
                       if skipped else ""))
    return done


def cmd_check(args: argparse.Namespace) -> int:
    ref_dir = reference_dir(args.reference_dir)
    records = load_records(args.records)
    if args.update:
        for line in update_tables(records, ref_dir, args.with_perf):
            print(line)
    results = [check_record(r, ref_dir) for r in records]
    print("\n\n".join(_render_check(r) for r in results))
    failed = sum(not r.passed for r in results)
    print(f"\n{len(results) - failed} passed, {failed} failed")
    return EXIT_OK if failed == 0 else EXIT_FAILED


def add_check(sub: Any) -> None:
    p = sub.add_parser("check", help="pass/fail records against reference_results/<workload>.csv")
    p.add_argument("records", nargs="+", type=Path, metavar="RECORD",
                   help="record.json files, run folders, or folders to search")
    p.add_argument("--reference-dir", type=Path,
                   help="default: $HARNESS_REFERENCE_DIR or reference_results")
    p.add_argument("--update", action="store_true",
                   help="write the records' measured values as reference rows first (several "
                        "records of one configuration: mean, tolerance from their spread)")
    p.add_argument("--with-perf", action="store_true",
                   help="with --update: also write fps and peak_memory_bytes rows")
    p.set_defaults(func=cmd_check)


# ----------------------------------------------------------------------------- parity
def cmd_parity(args: argparse.Namespace) -> int:
    if args.numerics:
        if args.records:
            raise UsageError("--numerics runs its own steps; give no records with it")
        from harness.numerics import format_report, run_numerics

        report = run_numerics(args.numerics, args.backend, steps=args.steps,
                              precision=args.precision, mode=args.mode or "",
                              emulate=args.emulate, tol=args.tol, seed=args.seed,
                              scale=args.scale, overrides=tuple(args.overrides))
        print(format_report(report))
        return EXIT_OK if report.passed else EXIT_FAILED
    if not args.records:
        raise UsageError("give records to compare, or --numerics WORKLOAD --backend B")
    from harness import parity

    records = load_records(args.records)
    text = parity.render(records, args.format, reference_dir(args.reference_dir))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    if args.figure:
        # stderr: stdout may be the markdown itself (e.g. >> $GITHUB_STEP_SUMMARY)
        print(f"wrote {parity.figure(records, args.figure)}", file=sys.stderr)
    return EXIT_OK


def add_parity(sub: Any) -> None:
    p = sub.add_parser("parity", help="parity table/figure across records, or --numerics")
    p.add_argument("records", nargs="*", type=Path, metavar="RECORD",
                   help="records of one workload and scale; the first is the baseline")
    p.add_argument("--format", default="markdown", choices=("markdown", "csv", "html"))
    p.add_argument("--out", type=Path, help="write the table here instead of stdout")
    p.add_argument("--figure", type=Path, metavar="PNG", help="loss curves + FPS/memory bars")
    p.add_argument("--reference-dir", type=Path)
    g = p.add_argument_group("numerical parity (--numerics)")
    g.add_argument("--numerics", metavar="WORKLOAD",
                   help="per-step loss/gradient parity of --backend against CPU fp64/ref runs")
    g.add_argument("--backend", default="cpu")
    g.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    g.add_argument("--mode", default="", help="eager, lazy or compile (default: the backend's)")
    g.add_argument("--steps", type=int, default=5)
    g.add_argument("--emulate", action="store_true")
    g.add_argument("--tol", type=float, help="default 1e-3 (fp32), 1e-2 (bf16/fp16)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--scale", default="smoke")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_parity)


# ----------------------------------------------------------------------------- gate
def cmd_gate(args: argparse.Namespace) -> int:
    from harness.gate import gate, render

    baselines = load_records(args.baseline)
    candidates = load_records(args.records)
    thresholds = args.thresholds or reference_dir(None) / "gate_thresholds.csv"
    results = gate(candidates, baselines, thresholds,
                   {"step_time_rel": args.time_threshold, "memory_rel": args.memory_threshold,
                    "alpha": args.alpha})
    print(render(results))
    return EXIT_FAILED if any(r.failed for r in results) else EXIT_OK


def add_gate(sub: Any) -> None:
    p = sub.add_parser("gate",
                       help="fail (exit 1) when a run is slower or bigger than its baseline")
    p.add_argument("--baseline", action="append", required=True, type=Path, metavar="DIR_OR_RECORD",
                   help="baseline record(s) or folders of them (repeatable)")
    p.add_argument("records", nargs="+", type=Path, metavar="RECORD")
    p.add_argument("--thresholds", type=Path,
                   help="CSV workload,step_time_rel,memory_rel,alpha,note "
                        "(default reference_results/gate_thresholds.csv)")
    p.add_argument("--time-threshold", type=float, help="relative median slowdown, e.g. 0.05")
    p.add_argument("--memory-threshold", type=float, help="relative peak-memory growth, e.g. 0.10")
    p.add_argument("--alpha", type=float, help="significance level of the U test")
    p.set_defaults(func=cmd_gate)


VERBS: list[Callable[[Any], None]] = [add_check, add_parity, add_gate]
