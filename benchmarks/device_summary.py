"""Summary table of the records one device check wrote: FPS, memory, FLOPs and MFU per run.

    python benchmarks/device_summary.py RUNS_DIR [--out summary.md]

MFU = samples/s x the record's `model.train_flops_per_sample` / the device's dense peak for
the run's precision: bf16 against the bf16 tensor-core peak, fp32 against the TF32 one (cuDNN
runs fp32 convolutions in TF32 by default). Peaks come from the vendor datasheets below, by
device name; PEAK_TFLOPS_BF16 / PEAK_TFLOPS_FP32 override them (a device not listed gets no
MFU rather than a guessed one). Records without a FLOP count get no MFU either.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

# Dense (no sparsity) peaks in TFLOPS, from NVIDIA's datasheets: (bf16, tf32). First match wins.
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.4, 494.7),
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.4, 494.7),  # SXM
    ("A100", 312.0, 156.0),
    ("L40S", 362.1, 183.0),
    ("A10", 125.0, 62.5),
)


def peak_tflops(device_name: str, precision: str) -> float | None:
    env = os.environ.get("PEAK_TFLOPS_BF16" if precision == "bf16" else "PEAK_TFLOPS_FP32")
    if env:
        return float(env)
    for key, bf16, tf32 in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return bf16 if precision in ("bf16", "fp16") else tf32
    return None


def row(record: dict[str, Any], path: Path) -> dict[str, Any]:
    tp, mem = record.get("throughput") or {}, record.get("memory") or {}
    model = record.get("model") or {}
    fps = tp.get("samples_per_s")
    flops = model.get("train_flops_per_sample")
    device = (record.get("env") or {}).get("device_name", "?")
    peak = peak_tflops(device, record.get("precision", "fp32"))
    achieved = fps * flops / 1e12 if fps and flops else None
    peak_bytes = mem.get("device_peak_allocated_bytes")
    return {
        "run": path.parent.name, "workload": record.get("workload"),
        "precision": record.get("precision"), "status": record.get("status"),
        "device": device, "samples_per_s": fps, "step_p50_s": tp.get("step_time_s_p50"),
        "timed_steps": tp.get("timed_steps"),
        "peak_alloc_gib": peak_bytes / 2**30 if peak_bytes else None,
        "params_m": model["params"] / 1e6 if model.get("params") else None,
        "gflops_per_sample": flops / 1e9 if flops else None,
        "achieved_tflops": achieved,
        "mfu": achieved / peak if achieved and peak else None,
    }


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    cols = [("workload", 0), ("precision", 0), ("status", 0), ("samples_per_s", 1),
            ("step_p50_s", 3), ("timed_steps", 0), ("peak_alloc_gib", 2), ("params_m", 1),
            ("gflops_per_sample", 1), ("achieved_tflops", 1), ("mfu", 3)]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c], d) for c, d in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, help="folder holding one sub-folder per run")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    records = sorted(args.runs.glob("*/record.json"))
    rows = [row(json.loads(f.read_text()), f) for f in records]
    devices = sorted({r["device"] for r in rows})
    text = (f"{len(rows)} records in {args.runs} on {', '.join(devices) or 'no device'}\n\n"
            + table(rows) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)
        (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
