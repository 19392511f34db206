"""The inference verbs of `harness`: eval and export (added by harness/cli.py).

`harness eval`'s options are generated from EvalConfig's fields (harness/config.py, beside
RunConfig, torch-free), so a new EvalConfig field is a new flag whose value reaches
EvalConfig with no mapping here.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.config import EvalConfig
from harness.config_flags import add_config_arguments, config_values
from harness.errors import EXIT_OK, UsageError, exit_code_of

# `harness export` takes the fields that say which model and data, as eval does.
_EXPORT_FIELDS = ("workload", "checkpoint", "scale", "data", "cache_dir", "overrides")


def cmd_eval(args: argparse.Namespace) -> int:
    from harness.evaluation import run_eval
    from harness.run_checks import validate_eval_numbers

    validate_eval_numbers(args)
    cfg = EvalConfig(**config_values(EvalConfig, args))
    record = run_eval(cfg, overwrite=args.overwrite)
    tp = record.throughput
    parts = [f"status {record.status}"]
    if tp.get("samples_per_s"):
        parts.append(f"{tp['samples_per_s']:.2f} samples/s (batch {tp.get('batch_size')})")
    if tp.get("latency_s_p50") is not None:
        parts.append(f"latency p50 {tp['latency_s_p50'] * 1e3:.1f} ms, "
                     f"p90 {tp['latency_s_p90'] * 1e3:.1f} ms")
    if tp.get("postprocess_s_p50") is not None:
        parts.append(f"of which postprocess p50 {tp['postprocess_s_p50'] * 1e3:.1f} ms")
    agree = record.raw_output_agreement
    if agree:
        parts.append(f"vs PyTorch: max abs diff {agree['max_abs_diff']:.3g}, decoded differ "
                     f"{agree['decoded']['fraction_differ']:.1%}")
    print("[harness] " + ", ".join(parts) + f"; record {record.out_dir}/record.json",
          flush=True)
    return exit_code_of(record.status)


def add_eval(sub: Any) -> None:
    """The eval verb; its options from EvalConfig's fields."""
    p = sub.add_parser("eval", help="evaluate trained weights: metrics, predictions, inference "
                                    "speed and memory, as a record with kind 'eval'")
    p.set_defaults(func=cmd_eval)
    add_config_arguments(p, EvalConfig)
    p.add_argument("--overwrite", action="store_true",
                   help="--out DIR holds a previous evaluation: delete its files first "
                        "(default: refused; a training run's folder is always refused)")


# ----------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from harness.export import DEFAULT_OPSET, export_for_checkpoint
    from harness.run_checks import validate_eval_numbers

    validate_eval_numbers(args)
    if args.format != "onnx":
        raise UsageError(f"unknown export format {args.format!r} (valid: onnx)")
    if args.out is not None and Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder: give the file to write "
                         f"(e.g. {Path(args.out) / 'model.onnx'})")
    info = export_for_checkpoint(args.workload, args.checkpoint, args.out, args.opset or DEFAULT_OPSET,
                                 scale=args.scale, data=args.data, cache_dir=args.cache_dir,
                                 overrides=tuple(args.overrides))
    shapes = ", ".join(f"{i['name']} {tuple(i['shape'])} {i['dtype']}" for i in info["inputs"])
    print(f"[harness] exported {args.workload} to {info['path']} (opset {info['opset']}, "
          f"onnx.checker ok): inputs {shapes}; {len(info['outputs'])} outputs", flush=True)
    return EXIT_OK


def add_export(sub: Any) -> None:
    """The export verb; its options from EvalConfig's fields that say which model and data."""
    p = sub.add_parser("export", help="export a checkpoint's network forward (ONNX, fixed HxW, "
                                      "dynamic batch), checked with onnx.checker")
    p.set_defaults(func=cmd_export)
    add_config_arguments(p, EvalConfig, only=_EXPORT_FIELDS)
    p.add_argument("--format", default="onnx", help="onnx (the only one)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.add_argument("--out", type=Path, help="output file (default: model.onnx beside the "
                                             "checkpoint)")
