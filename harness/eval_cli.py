"""The inference verbs of `harness`: eval and export (loaded by harness/cli.py via VERBS)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from harness.errors import EXIT_FAILED, EXIT_OK, UsageError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a run's checkpoint.pt, or a bare state dict (loaded weights_only)")
    p.add_argument("--scale", help="preset (default: the one the checkpoint's config matches)")
    p.add_argument("--data", type=Path, help="dataset root (default: the synthetic data)")
    p.add_argument("--cache-dir", type=Path, help="where synthetic data is written")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a workload config field (not compared with the checkpoint)")


# ----------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from harness.evaluation import EvalConfig, run_eval
    from harness.run_checks import validate_eval_numbers

    validate_eval_numbers(args)
    cfg = EvalConfig(
        workload=args.workload, checkpoint=args.checkpoint, backend=args.backend,
        mode=args.mode or "", precision=args.precision, scale=args.scale, data=args.data,
        batch_size=args.batch_size, warmup_batches=args.warmup_batches, seed=args.seed,
        overrides=tuple(args.overrides), out=args.out, cache_dir=args.cache_dir,
        num_workers=args.num_workers, emulate=args.emulate, onnx=args.onnx, opset=args.opset,
        agreement_batches=args.agreement_batches, profile=args.profile,
        profile_steps=args.profile_steps)
    record = run_eval(cfg, overwrite=args.overwrite)
    tp = record.get("throughput") or {}
    parts = [f"status {record['status']}"]
    if tp.get("samples_per_s"):
        parts.append(f"{tp['samples_per_s']:.2f} samples/s (batch {tp.get('batch_size')})")
    if tp.get("latency_s_p50") is not None:
        parts.append(f"latency p50 {tp['latency_s_p50'] * 1e3:.1f} ms, "
                     f"p90 {tp['latency_s_p90'] * 1e3:.1f} ms")
    if tp.get("postprocess_s_p50") is not None:
        parts.append(f"of which postprocess p50 {tp['postprocess_s_p50'] * 1e3:.1f} ms")
    agree = record.get("raw_output_agreement")
    if agree:
        parts.append(f"vs PyTorch: max abs diff {agree['max_abs_diff']:.3g}, decoded differ "
                     f"{agree['decoded']['fraction_differ']:.1%}")
    print("[harness] " + ", ".join(parts) + f"; record {record['out_dir']}/record.json",
          flush=True)
    return EXIT_OK if record["status"] == "ok" else EXIT_FAILED


def add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate trained weights: metrics, predictions, inference "
                                    "speed and memory, as a record with kind 'eval'")
    _common(p)
    p.add_argument("--backend", default="cpu")
    modes = p.add_mutually_exclusive_group()
    for mode in ("lazy", "eager", "compile"):
        modes.add_argument(f"--{mode}", dest="mode", action="store_const", const=mode,
                           help=f"{mode} execution mode (validated against the backend)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--batch-size", type=int, help="eval batch size (default: the preset's)")
    p.add_argument("--warmup-batches", type=int, help="untimed batches first (default 2)")
    p.add_argument("--workers", type=int, dest="num_workers", help="DataLoader workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="eval folder (default runs/eval-<workload>-...)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out DIR holds a previous evaluation: delete its files first "
                        "(default: refused; a training run's folder is always refused)")
    p.add_argument("--emulate", action="store_true",
                   help="run on a CPU-emulated device (portability dry run)")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler trace of the first timed batches (<out>/"
                        "profile_trace.json) and a per-component time table in the record")
    p.add_argument("--profile-steps", type=int, default=3, help="batches to profile")
    g = p.add_argument_group("inference-only backends (onnxruntime)")
    g.add_argument("--onnx", type=Path, help="run this exported graph (default: export one "
                                              "from the checkpoint into the eval folder)")
    g.add_argument("--opset", type=int, help="ONNX opset when exporting (default 17)")
    g.add_argument("--agreement-batches", type=int, default=0,
                   help="batches compared with the PyTorch model output by output (0 = all)")
    p.set_defaults(func=cmd_eval)


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
    p = sub.add_parser("export", help="export a checkpoint's network forward (ONNX, fixed HxW, "
                                      "dynamic batch), checked with onnx.checker")
    _common(p)
    p.add_argument("--format", default="onnx", help="onnx (the only one)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.add_argument("--out", type=Path, help="output file (default: model.onnx beside the "
                                             "checkpoint)")
    p.set_defaults(func=cmd_export)


VERBS: list[Callable[[Any], None]] = [add_eval, add_export]
