"""Harness overhead: `harness run`'s samples/s against a bare hand-written training loop.

Both sides train the same workload model, built by the workload, on the same data (its
datasets(), batch size, collate function and DataLoader workers, shuffled from the same seed),
with the same optimizer, scheduler and grad clipping, on the same device, for the same number
of warmup and timed steps. The harness side is `harness.runner.execute`: the record's
`throughput.samples_per_s` over its synchronized timed window, with the window's pauses (log
points, observer hooks: `paused_s`) counted back in, as the wall time they are. The bare side
is the loop below, timed the same way: from the end of the warmup to the end of the last step,
data loading included. Repeats alternate harness and bare (and which goes first) so a noisy,
shared machine drifts both alike; the ratio is median(harness) / median(bare).

    python benchmarks/overhead.py yolov3 --steps 40 --warmup 5 --repeats 5 --json out.json

Prints one JSON object (also written to --json): each side's samples/s per repeat, their
medians and the ratio. Register extra workloads (the host tests' tiny one) with
HARNESS_PLUGINS=tests.tiny_workload.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from harness import plugins  # noqa: E402
from harness.config import RunConfig  # noqa: E402


def harness_samples_per_s(args: argparse.Namespace, out: Path) -> float:
    from harness.runner import execute

    config = RunConfig(workload=args.workload, backend=args.backend, precision=args.precision,
                       scale=args.scale, steps=args.steps, warmup_steps=args.warmup,
                       batch_size=args.batch_size, seed=args.seed, cache_dir=args.cache_dir,
                       eval=False, checkpoint=False, out=out)
    record = execute(config)
    if record["status"] != "ok":
        raise RuntimeError(f"harness run ended {record['status']}: {record['error']}")
    tp = record["throughput"]
    # The record's FPS leaves out the window's pauses (log points, observer hooks); overhead
    # is about the wall time a user waits, so they count here.
    paused = tp.get("paused_s") or 0.0
    return float(tp["samples_per_s"]) * tp["window_s"] / (tp["window_s"] + paused)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def bare_samples_per_s(args: argparse.Namespace) -> float:
    """The loop a user would write by hand around the same workload pieces."""
    workload_cls = plugins.get_workload(args.workload)
    cfg = workload_cls.presets()[args.scale]
    if args.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
    wl = workload_cls(cfg)
    backend_cls = plugins.get_backend(args.backend)
    backend = backend_cls(mode=backend_cls.capabilities.default_mode, emulated=False)
    device = backend.setup(0)
    torch.manual_seed(args.seed)
    data = wl.datasets(None, Path(args.cache_dir) if args.cache_dir else
                       Path.home() / ".cache" / "perception-harness")
    cfg = wl.config  # datasets() may fill fields from the data
    workers = getattr(cfg, "num_workers", 0) or 0
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
        collate_fn=data.collate, num_workers=workers, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(args.seed))
    model = wl.build_model().to(device)
    optimizer = wl.build_optimizer(model)
    scheduler = wl.build_scheduler(optimizer, args.steps)
    scaler = backend.grad_scaler(args.precision)
    clip = getattr(cfg, "grad_clip", None)
    model.train()

    def batches() -> Any:
        while True:
            yield from loader

    it = batches()
    samples = 0
    start = 0.0
    for step in range(args.steps):
        if step == args.warmup:
            backend.synchronize()
            start = time.perf_counter()
            samples = 0
        batch = next(it)
        samples += wl.samples(batch)
        batch = _to(batch, device)
        with backend.autocast(args.precision):
            loss = sum(wl.loss(model, batch).values())
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
    backend.synchronize()
    elapsed = time.perf_counter() - start
    backend.close()
    return samples / elapsed


def measure(args: argparse.Namespace) -> dict[str, Any]:
    harness, bare = [], []
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        for i in range(args.repeats):
            # Which side goes first alternates too: the second inherits the first's leftovers
            # (garbage, allocator state, a warmer page cache).
            if i % 2:
                bare.append(bare_samples_per_s(args))
                harness.append(harness_samples_per_s(args, Path(tmp) / f"run{i}"))
            else:
                harness.append(harness_samples_per_s(args, Path(tmp) / f"run{i}"))
                bare.append(bare_samples_per_s(args))
            print(f"[overhead] repeat {i + 1}/{args.repeats}: harness {harness[-1]:.2f}, "
                  f"bare {bare[-1]:.2f} samples/s", file=sys.stderr)
    h, b = statistics.median(harness), statistics.median(bare)
    return {"workload": args.workload, "backend": args.backend, "precision": args.precision,
            "scale": args.scale, "steps": args.steps, "warmup_steps": args.warmup,
            "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
            "harness_samples_per_s": harness, "bare_samples_per_s": bare,
            "harness_median": h, "bare_median": b, "ratio": h / b}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload")
    p.add_argument("--backend", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--scale", default="smoke")
    p.add_argument("--steps", type=int, default=40, help="steps per run, warmup included")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps at the start")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        p.error("--warmup must be in [0, --steps)")
    result = measure(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
