"""`harness eval`: load trained weights, run the val split, record metrics and inference speed.

The weights come from a run's checkpoint.pt (it names its workload and holds the workload
config it was trained with) or a bare state dict, always through the safe loader; which
workload config they must match is harness/eval_config.py's business. Preparation (backend
checks, data, device, seed, the val loader) is the same as a run's (harness/prepare.py).
Like a run (the same lifecycle, harness/lifecycle.py), anything that goes wrong once the
record exists ends in record.json with a status, SIGTERM and a CPU OOM included.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from harness import plugins
from harness.api import Workload
from harness.config import RunConfig, config_to_dict
from harness.errors import UsageError
from harness.eval_config import (
    EvalConfig,
    build_workload,
    check_checkpoint_config,
    load_checkpoint_into,
)
from harness.inference import raw_output_agreement, run_inference
from harness.lifecycle import Job, backend_memory, fallback_ops
from harness.oom import describe_oom, eval_memory_hint
from harness.outdir import (RecordWriter, RunFolder, claim_run_folder, default_run_folder,
                            write_predictions)
from harness.prepare import PreparedRun, resolve_run, setup_run
from harness.records import Record, environment
from harness.safe_load import Checkpoint


def default_out_dir(cfg: EvalConfig) -> Path:
    """runs/eval-<workload>-<backend>-<precision>-<time>-<random>: unique within a second."""
    return default_run_folder(f"eval-{cfg.workload}", cfg.backend, cfg.precision)


def run_eval(cfg: EvalConfig, overwrite: bool = False) -> Record:
    """Evaluate a checkpoint; return the record (also written to <out>/record.json).

    Usage errors found before the record exists (bad names, a checkpoint of another
    workload or config, an --out folder holding a record) raise without one; anything
    later is recorded, then re-raised. `overwrite`: an --out folder holding a previous
    evaluation is cleared first (never a training run's folder).
    """
    backend_cls = plugins.get_backend(cfg.backend)  # bad names and flags before any loading
    backend_cls.validate(cfg.mode or backend_cls.capabilities.default_mode, cfg.precision)
    workload, ckpt, scale = build_workload(cfg)
    # The same preparation as `harness run` (core's prepare.py): backend checks, then data.
    prepared = resolve_run(RunConfig(
        workload=cfg.workload, backend=cfg.backend, mode=cfg.mode, precision=cfg.precision,
        scale=scale, data=cfg.data, eval_batch_size=cfg.batch_size, seed=cfg.seed,
        overrides=cfg.overrides, out=cfg.out, cache_dir=cfg.cache_dir,
        num_workers=cfg.num_workers, emulate=cfg.emulate), workload=workload)
    data = prepared.load_data()
    check_checkpoint_config(cfg, workload, ckpt, scale)
    out_dir = Path(cfg.out) if cfg.out else default_out_dir(cfg)
    folder = _claim_eval_folder(out_dir, overwrite, Path(cfg.checkpoint))
    return _run_eval(cfg, prepared, workload, ckpt, scale, data, out_dir, folder)


def _claim_eval_folder(out_dir: Path, overwrite: bool, checkpoint: Path) -> RunFolder:
    """Lock --out for this evaluation; a folder holding a record is refused (a training
    run's always; a previous evaluation's unless `overwrite`, which clears it first)."""
    record = out_dir / "record.json"
    if record.is_file():
        try:  # the raw file: a folder is protected even when its record is not valid
            kind = json.loads(record.read_text()).get("kind", "train")
        except (OSError, ValueError, AttributeError):
            kind = "unreadable"
        if kind != "eval":
            raise UsageError(f"--out {out_dir} holds a run's record ({record}, kind {kind}): "
                             f"an evaluation writes its own folder; choose another --out")
        if not overwrite:
            raise UsageError(f"--out {out_dir} already holds an evaluation ({record}): pass "
                             f"--overwrite to replace it, or choose another --out")
        if out_dir.resolve() in checkpoint.resolve().parents:
            raise UsageError(f"--overwrite {out_dir}: would delete the checkpoint being "
                             f"evaluated ({checkpoint}); choose another --out")
    return claim_run_folder(out_dir, overwrite=overwrite)


def _run_eval(cfg: EvalConfig, prepared: PreparedRun, workload: Workload, ckpt: Checkpoint,
              scale: str, data: Any, out_dir: Path, folder: RunFolder) -> Record:
    backend = prepared.backend
    try:
        record = _eval_record(cfg, workload, ckpt, scale, data, out_dir, backend)
    except BaseException:
        folder.release()
        raise
    job = Job(record, RecordWriter(out_dir / "record.json"), folder)
    job.start()

    def finish() -> None:
        if not record.memory:  # ended before the timed window did
            record.memory = backend_memory(backend)
        record.fallback_ops = fallback_ops(backend)

    return job.run(
        lambda: _evaluate(cfg, prepared, ckpt, out_dir, record, job.progress), finish=finish,
        teardown=[("closing the backend", prepared.close)],
        on_oom=lambda: describe_oom(record, backend, job.progress,
                                    eval_memory_hint(cfg.batch_size or _batch_size(workload),
                                                     cfg.precision)))


def _eval_record(cfg: EvalConfig, workload: Workload, ckpt: Checkpoint, scale: str, data: Any,
                 out_dir: Path, backend: Any) -> Record:
    return Record(
        kind="eval", workload=cfg.workload, scale=scale, backend=cfg.backend,
        mode=backend.mode, precision=cfg.precision,
        config={"run": cfg.to_dict(), "workload": config_to_dict(workload.config)},
        seed=cfg.seed, emulated=backend.emulated,
        checkpoint={"path": str(Path(cfg.checkpoint).resolve()), "layout": ckpt.layout,
                    "step": ckpt.step, "config_checked": ckpt.workload_config is not None,
                    "weights": ckpt.weights},
        data={"source": data.source, "from_data": dict(data.from_data)},
        out_dir=str(out_dir), metric_directions=dict(workload.metrics) or None,
        primary_metric=workload.primary_metric or None)


def _batch_size(workload: Workload) -> int:
    return workload.config.eval_batch_size or 1


def _evaluate(cfg: EvalConfig, prepared: PreparedRun, ckpt: Checkpoint, out_dir: Path,
              record: Record, progress: dict[str, Any]) -> None:
    progress["phase"] = "setup"
    setup_run(prepared, load_data=False)
    workload, backend = prepared.workload, prepared.backend
    device = prepared.device or torch.device("cpu")
    record.env = environment(backend.describe())
    torch_model = workload.build_model()
    names = load_checkpoint_into(torch_model, workload, ckpt, cfg, record.scale)
    if record.checkpoint is not None:  # layout: the file's kind; names: whose key names
        record.checkpoint["names"] = names
    torch_model.eval()
    record.model["params"] = sum(p.numel() for p in torch_model.parameters())
    batch_size = _batch_size(workload)
    loader = prepared.loader("val")  # the loader a run's final evaluation uses
    if len(loader) == 0:
        raise UsageError("the val split is empty")
    if backend.inference_only:
        model = _graph_model(cfg, workload, backend, torch_model, loader, out_dir, record)
    else:
        model = backend.prepare_model(torch_model.to(device))
    warmup = cfg.warmup_batches if cfg.warmup_batches is not None else 2
    warmup = max(0, min(warmup, len(loader) - 1))
    print(f"[harness] eval {cfg.workload} ({record.scale}) on {backend.name}/{backend.mode}/"
          f"{cfg.precision}{' (emulated)' if backend.emulated else ''}: {len(loader)} batches of "
          f"{batch_size}, {warmup} warmup; out {out_dir}", flush=True)
    profiler = None
    if cfg.profile:
        from harness.profiling import StepProfiler

        profiler = StepProfiler(backend, out_dir, cfg.profile_steps)
    progress["phase"] = "inference"
    result = run_inference(workload, model, loader, backend, cfg.precision, warmup, batch_size,
                           profiler)
    if profiler is not None and profiler.result is not None:
        record.profile = {**profiler.result, "note": "profiled batches are inside the timed "
                                                     "window: latency includes the overhead"}
        print(profiler.console(), flush=True)
    record.memory = backend_memory(backend)  # the timed window's peak, before the extra passes
    throughput = result.throughput
    if backend.emulated:
        throughput["meaningful"] = False
        throughput["note"] = "emulated device: speed is the CPU emulation's, not hardware's"
    record.throughput = throughput
    progress["phase"] = "metric"
    t0 = time.perf_counter()
    metrics = {k: float(v) for k, v in workload.evaluate(result.predictions).items()}
    record.metrics = metrics
    record.workload_source = workload.source_info()
    record.evals = [{"step": ckpt.step, "metrics": metrics,
                     "eval_samples": len(result.predictions),
                     "inference_s": round(result.seconds, 3),
                     "eval_s": round(result.seconds + time.perf_counter() - t0, 3)}]
    record.predictions = write_predictions(workload, result.predictions, out_dir)
    if backend.inference_only:
        progress["phase"] = "output agreement"
        limit = cfg.agreement_batches or None
        record.raw_output_agreement = raw_output_agreement(
            workload, model, torch_model, itertools.islice(loader, limit), torch.device("cpu"),
            backend.label(),
            "pytorch (cpu, fp32)", output_names=(record.onnx or {}).get("outputs"))
    print("[harness] eval: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)


def _graph_model(cfg: EvalConfig, workload: Workload, backend: Any, torch_model: Any,
                 loader: Any, out_dir: Path, record: Record) -> Any:
    """Inference-only backends run an exported graph: export it now, or load --onnx."""
    from harness.export import DEFAULT_OPSET, capture_forward, export_onnx

    args, outputs = capture_forward(workload, torch_model, next(iter(loader)), torch.device("cpu"))
    _, spec = torch.utils._pytree.tree_flatten(outputs)
    if cfg.onnx is not None:
        path = Path(cfg.onnx)
        if not path.is_file():
            raise UsageError(f"no ONNX graph at {path}")
        from harness.export import output_names

        info = {"path": str(path.resolve()), "exported": False, "outputs": output_names(outputs)}
    else:
        path = out_dir / "model.onnx"
        info = export_onnx(workload, torch_model, args, outputs, path, cfg.opset or DEFAULT_OPSET)
        info.update(path=os.path.relpath(path.resolve(), out_dir.resolve()), exported=True)
    record.onnx = info
    graph = backend.load_graph(path, torch_model, spec, args)
    record.env = environment(backend.describe())  # the providers the session really uses
    return graph
