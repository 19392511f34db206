"""The report verbs of `harness`: check, parity, gate (loaded by harness/cli.py via VERBS).

Each `add(subparsers)` adds one verb; its func returns the exit code (0 ok, 1 failed).
Building these parsers and running check, parity tables and gate imports neither torch nor
any workload plugin (harness/cli.py loads plugins only for the verbs that need them):
matching lives in harness/checking.py, `check --update` in harness/check_update.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness.errors import EXIT_FAILED, EXIT_OK, UsageError
from harness.reference import load_records, reference_dir

if TYPE_CHECKING:
    from harness.checking import CheckResult


# ----------------------------------------------------------------------------- check
def _render_check(res: CheckResult) -> str:
    rec = res.record
    lines = [f"record: {rec.path} ({rec.workload} {rec.scale} "
             f"{rec.kind}, {rec.backend} {rec.precision} "
             f"(weights {rec.weights_dtype or 'fp32'}) {rec.mode} "
             f"ws={rec.world_size}, status {rec.status})"]
    if res.match is None:
        return "\n".join([*lines, f"  {res.summary}", "  result: FAIL (no matching row)"])
    lines.append(f"  matched: {res.match.describe()}")
    lines.append(f"  source: {res.match.rows[0].source}")
    head = ("metric", "measured", "reference", "tolerance", "direction", "verdict")
    rows = [(v.metric, "-" if v.measured is None else f"{v.measured:.6g}", f"{v.row.value:.6g}",
             f"±{v.row.tolerance:g} ({v.row.tolerance_kind})", v.row.direction,
             v.status + (f" ({v.note})" if v.note and v.status not in ("pass", "not comparable")
                         else ""))
            for v in res.verdicts]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    for r in [head, *rows]:
        cells = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False))
        lines.append(("  " + cells).rstrip())
    if res.passed:
        lines.append("  result: PASS")
    elif res.not_comparable:
        lines.append(f"  result: NOT COMPARABLE ({res.summary.removeprefix('not comparable: ')})")
    else:
        lines.append(f"  result: FAIL ({res.summary})")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    from harness.check_update import update_tables
    from harness.checking import check_record

    ref_dir = reference_dir(args.reference_dir)
    records = load_records(args.records)
    if args.update:
        for line in update_tables(records, ref_dir, args.with_perf):
            print(line)
    results = [check_record(r, ref_dir, args.compare_anyway) for r in records]
    print("\n\n".join(_render_check(r) for r in results))
    failed = sum(not r.passed for r in results)
    unlike = sum(r.not_comparable for r in results)
    print(f"\n{len(results) - failed} passed, {failed - unlike} failed"
          + (f", {unlike} not comparable" if unlike else ""))
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
    p.add_argument("--compare-anyway", action="store_true",
                   help="judge the accuracy of runs that started from other weights or trained "
                        "another schedule than the matched rows assume (default: not comparable)")
    p.set_defaults(func=cmd_check)


# ----------------------------------------------------------------------------- parity
def cmd_parity(args: argparse.Namespace) -> int:
    if args.numerics:
        if args.records:
            raise UsageError("--numerics runs its own steps; give no records with it")
        from harness.run_checks import validate_numerics_numbers

        validate_numerics_numbers(args)  # before torch and the workload are loaded
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
    from harness.parity import FORMATS
    from harness.parity_render import render

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    records = parity.rename_metrics(load_records(args.records), args.metric_map)
    table = parity.build(records, reference_dir(args.reference_dir), metrics,
                         compare_anyway=args.compare_anyway,
                         across_workloads=args.across_workloads)
    if args.figure:
        from harness.parity_figure import figure

        # stderr: stdout may be the markdown itself (e.g. >> $GITHUB_STEP_SUMMARY)
        print(f"wrote {figure(table, args.figure)}", file=sys.stderr)
    text = render(table, args.format, args.figure, verbose=args.verbose)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    # Once on the console: markdown and html carry the warnings; printed to stdout, they are
    # not repeated on stderr.
    if args.out or FORMATS[args.format] == "csv":
        for line in table.warnings:
            print(f"harness parity: warning: {line}", file=sys.stderr)
    if table.worse and not args.no_fail:
        print("harness parity: a verdict is WORSE (exit 1; --no-fail to only display)",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def add_parity(sub: Any) -> None:
    p = sub.add_parser("parity", help="parity table/figure across records, or --numerics",
                       description="Metrics as rows, one column per run, then each run's delta "
                                   "to the first (the baseline) and a verdict. Exit 1 when any "
                                   "verdict is WORSE (unless --no-fail).")
    p.add_argument("records", nargs="*", type=Path, metavar="RECORD",
                   help="records of one workload and scale; the first is the baseline")
    p.add_argument("--format", default="markdown", choices=("markdown", "md", "csv", "html"),
                   help="html: a complete page, with the figure embedded when --figure is given")
    p.add_argument("--metrics", metavar="A,B,C",
                   help="only these metrics, in this order (fps and peak_memory_bytes included)")
    p.add_argument("--no-fail", action="store_true",
                   help="exit 0 even when a verdict is WORSE (display only)")
    p.add_argument("--compare-anyway", action="store_true",
                   help="judge accuracy even between runs that started from other weights or "
                        "trained other schedules (default: not comparable)")
    p.add_argument("--across-workloads", action="store_true",
                   help="records of different workloads side by side (two implementations of "
                        "one model: yolov3 and an mmdet: config on the same data)")
    p.add_argument("--metric-map", action="append", default=[], metavar="NAME=AS",
                   help="read metric NAME of any record as AS (e.g. coco/bbox_mAP=AP); "
                        "repeatable")
    p.add_argument("--out", type=Path, help="write the table here instead of stdout")
    p.add_argument("--figure", type=Path, metavar="PNG",
                   help="loss curves, primary metric with its tolerance band, FPS/memory bars")
    p.add_argument("--reference-dir", type=Path)
    p.add_argument("--verbose", action="store_true",
                   help="also the tolerance table: each metric's band, direction and where "
                        "they come from (html pages always carry it)")
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
    from harness.gate import gate, load_thresholds, render

    for flag, value in (("--time-threshold", args.time_threshold),
                        ("--memory-threshold", args.memory_threshold)):
        if value is not None and not value >= 0:  # `not >=` also refuses NaN
            raise UsageError(f"{flag} must be >= 0 (a relative increase, e.g. 0.05), got {value}")
    if args.alpha is not None and not 0 < args.alpha <= 1:
        raise UsageError(f"--alpha must be in (0, 1], got {args.alpha}")
    if (args.baseline is None) == (args.history is None):
        raise UsageError("harness gate: give --baseline DIR_OR_RECORD or --history DIR "
                         "(one of them)")
    if args.last is not None and (args.history is None or args.last < 1):
        raise UsageError("--last N goes with --history, N >= 1")
    candidates = load_records(args.records)
    default = reference_dir(None) / "gate_thresholds.csv"
    # An explicit --thresholds must exist (load_thresholds says so); the default file may be
    # absent in an installed package, and then the built-in defaults apply (the table says so).
    thresholds = args.thresholds or (default if default.is_file() else None)
    given = {"step_time_rel": args.time_threshold, "memory_rel": args.memory_threshold,
             "alpha": args.alpha}
    if args.history is not None:
        import dataclasses

        from harness.gate_history import DEFAULT_LAST, gate_history
        from harness.gate_history import render as render_history

        def thresholds_of(workload: str) -> Any:
            thr = load_thresholds(thresholds, workload)
            chosen = {k: v for k, v in given.items() if v is not None}
            return dataclasses.replace(thr, **chosen, source=f"{thr.source} + command line") \
                if chosen else thr

        results_h = gate_history(candidates, load_records(args.history),
                                 args.last or DEFAULT_LAST, thresholds_of)
        print(render_history(results_h))
        return EXIT_FAILED if any(r.failed for r in results_h) else EXIT_OK
    results = gate(candidates, load_records(args.baseline), thresholds, given)
    print(render(results))
    return EXIT_FAILED if any(r.failed for r in results) else EXIT_OK


def add_gate(sub: Any) -> None:
    p = sub.add_parser("gate",
                       help="fail (exit 1) when a run is slower or bigger than its baseline")
    p.add_argument("--baseline", action="append", type=Path, metavar="DIR_OR_RECORD",
                   help="baseline record(s) or folders of them (repeatable); per-step times "
                        "and memory")
    p.add_argument("--history", action="append", type=Path, metavar="DIR",
                   help="instead of --baseline: the last N comparable runs of these folders "
                        "(by started_at), samples/s and memory with a tolerance from their "
                        "spread; the output names the runs compared with")
    p.add_argument("--last", type=int, metavar="N",
                   help="with --history: how many of the most recent comparable runs "
                        "(default 5)")
    p.add_argument("records", nargs="+", type=Path, metavar="RECORD")
    p.add_argument("--thresholds", type=Path,
                   help="CSV workload,step_time_rel,memory_rel,alpha,note "
                        "(default reference_results/gate_thresholds.csv)")
    p.add_argument("--time-threshold", type=float, help="relative median slowdown, e.g. 0.05 "
                                                        "(--history: the samples/s floor)")
    p.add_argument("--memory-threshold", type=float, help="relative peak-memory growth, e.g. 0.10")
    p.add_argument("--alpha", type=float, help="significance level of the U test")
    p.set_defaults(func=cmd_gate)


VERBS: list[Callable[[Any], None]] = [add_check, add_parity, add_gate]
