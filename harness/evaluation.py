"""`harness eval`: load trained weights, run the val split, record metrics and inference speed.

The weights come from a run's checkpoint.pt (it names its workload and holds the workload
config it was trained with) or a bare state dict, always through the safe loader; which
workload config they must match is harness/eval_config.py's business. Preparation (backend
checks, data, device, seed, the val loader) is the same as a run's (harness/prepare.py).
Like a run, anything that goes wrong once the record exists ends in record.json with a status.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from harness import plugins
from harness.api import Workload
from harness.config import RunConfig, config_to_dict
from harness.errors import HarnessError, RunInterrupted, UsageError, worker_error_origin
from harness.eval_config import EvalConfig, build_workload, check_checkpoint_config
from harness.inference import raw_output_agreement, run_inference
from harness.outdir import RunFolder, claim_run_folder, default_run_folder
from harness.prepare import PreparedRun, resolve_run, setup_run
from harness.records import SCHEMA, environment, write_json_atomic
from harness.safe_load import Checkpoint, load_weights


def default_out_dir(cfg: EvalConfig) -> Path:
    """runs/eval-<workload>-<backend>-<precision>-<time>-<random>: unique within a second."""
    return default_run_folder(f"eval-{cfg.workload}", cfg.backend, cfg.precision)


def _status_for(exc: BaseException) -> str:
    if isinstance(exc, (KeyboardInterrupt, RunInterrupted)):
        return "interrupted"
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    return "failed"


def _memory(backend: Any) -> dict[str, Any]:
    try:
        memory = dataclasses.asdict(backend.memory())
    except Exception as exc:  # noqa: BLE001 - memory is reported, never fatal
        memory = {"error": repr(exc)}
    if backend.emulated:
        memory["meaningful"] = False
    return memory


def _write_predictions(workload: Workload, predictions: list[Any],
                       out_dir: Path) -> dict[str, Any] | None:
    writer = getattr(workload, "write_predictions", None)
    if writer is None:
        return None
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    info = writer(predictions, pred_dir.resolve())
    if info is None:
        if not any(pred_dir.iterdir()):
            pred_dir.rmdir()
        return None
    info = dict(info)
    if info.get("path"):
        path = Path(info["path"])
        info["path"] = os.path.relpath(path.resolve(), out_dir.resolve())
    return info


def run_eval(cfg: EvalConfig, overwrite: bool = False) -> dict[str, Any]:
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
    try:
        return _run_eval(cfg, prepared, workload, ckpt, scale, data, out_dir)
    finally:
        folder.release()


def _claim_eval_folder(out_dir: Path, overwrite: bool, checkpoint: Path) -> RunFolder:
    """Lock --out for this evaluation; a folder holding a record is refused (a training
    run's always; a previous evaluation's unless `overwrite`, which clears it first)."""
    record = out_dir / "record.json"
    if record.is_file():
        try:
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
              scale: str, data: Any, out_dir: Path) -> dict[str, Any]:
    backend = prepared.backend
    started = time.time()
    record: dict[str, Any] = {
        "schema": SCHEMA, "kind": "eval", "workload": cfg.workload, "scale": scale,
        "config": {"run": cfg.to_dict(), "workload": config_to_dict(workload.config)},
        "backend": cfg.backend, "mode": backend.mode, "precision": cfg.precision,
        "weights_dtype": "fp32", "strategy": "single", "world_size": 1, "seed": cfg.seed,
        "emulated": backend.emulated, "status": "running", "error": None,
        "checkpoint": {"path": str(Path(cfg.checkpoint).resolve()), "layout": ckpt.layout,
                       "step": ckpt.step, "config_checked": ckpt.workload_config is not None},
        "metrics": {}, "throughput": {}, "memory": {}, "losses": [], "evals": [],
        "model": {"params": None, "train_flops_per_sample": None}, "predictions": None,
        "data": {"source": data.source, "from_data": dict(getattr(data, "from_data", {}) or {})},
        "data_source": data.source, "fallback_ops": [], "env": {},
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "duration_s": None,
    }
    record["out_dir"] = str(out_dir)
    record_path = out_dir / "record.json"
    write_json_atomic(record_path, record)
    error: BaseException | None = None
    try:
        setup_run(prepared, load_data=False)
        _evaluate(cfg, prepared, ckpt, out_dir, record)
        record["status"] = "ok"
    except BaseException as raised:  # noqa: BLE001 - every ending gets a record
        error = exc = worker_error_origin(raised)
        record["status"] = _status_for(exc)
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        record["error"] = detail if isinstance(exc, HarnessError) else (
            detail + "\n" + "".join(traceback.format_tb(exc.__traceback__)[-3:]))
    finally:
        record["duration_s"] = round(time.time() - started, 3)
        if not record["memory"]:  # ended before the timed window did
            record["memory"] = _memory(backend)
        try:
            record["fallback_ops"] = backend.fallback_report()
        except Exception:  # noqa: BLE001
            record["fallback_ops"] = []
        write_json_atomic(record_path, record)
        prepared.close()
    if error is not None:
        raise error
    return record


def _evaluate(cfg: EvalConfig, prepared: PreparedRun, ckpt: Checkpoint, out_dir: Path,
              record: dict[str, Any]) -> None:
    workload, backend = prepared.workload, prepared.backend
    device = prepared.device or torch.device("cpu")
    record["env"] = environment(backend.describe())
    torch_model = workload.build_model()
    load_weights(torch_model, ckpt, cfg.checkpoint)
    torch_model.eval()
    record["model"]["params"] = sum(p.numel() for p in torch_model.parameters())
    wcfg = workload.config
    batch_size = getattr(wcfg, "eval_batch_size", None) or 1
    loader = prepared.loader("val")  # the loader a run's final evaluation uses
    if len(loader) == 0:
        raise UsageError("the val split is empty")
    if getattr(backend, "inference_only", False):
        model = _graph_model(cfg, workload, backend, torch_model, loader, out_dir, record)
    else:
        model = backend.prepare_model(torch_model.to(device))
    warmup = cfg.warmup_batches if cfg.warmup_batches is not None else 2
    warmup = max(0, min(warmup, len(loader) - 1))
    print(f"[harness] eval {cfg.workload} ({record['scale']}) on {backend.name}/{backend.mode}/"
          f"{cfg.precision}{' (emulated)' if backend.emulated else ''}: {len(loader)} batches of "
          f"{batch_size}, {warmup} warmup; out {out_dir}", flush=True)
    profiler = None
    if cfg.profile:
        from harness.profiling import StepProfiler

        profiler = StepProfiler(backend, out_dir, cfg.profile_steps)
    result = run_inference(workload, model, loader, backend, cfg.precision, warmup, batch_size,
                           profiler)
    if profiler is not None and profiler.result is not None:
        record["profile"] = {**profiler.result, "note": "profiled batches are inside the timed "
                                                        "window: latency includes the overhead"}
        print(profiler.console(), flush=True)
    record["memory"] = _memory(backend)  # the timed window's peak, before the extra passes
    throughput = result.throughput
    if backend.emulated:
        throughput["meaningful"] = False
        throughput["note"] = "emulated device: speed is the CPU emulation's, not hardware's"
    record["throughput"] = throughput
    t0 = time.perf_counter()
    metrics = {k: float(v) for k, v in workload.evaluate(result.predictions).items()}
    record["metrics"] = metrics
    record["evals"] = [{"step": ckpt.step, "metrics": metrics,
                        "eval_samples": len(result.predictions),
                        "inference_s": round(result.seconds, 3),
                        "eval_s": round(result.seconds + time.perf_counter() - t0, 3)}]
    record["predictions"] = _write_predictions(workload, result.predictions, out_dir)
    if getattr(backend, "inference_only", False):
        limit = cfg.agreement_batches or None
        record["raw_output_agreement"] = raw_output_agreement(
            workload, model, torch_model, itertools.islice(loader, limit), torch.device("cpu"),
            f"{backend.name} ({', '.join(getattr(backend, 'providers', []) or ['?'])})",
            "pytorch (cpu, fp32)", output_names=record.get("onnx", {}).get("outputs"))
    print("[harness] eval: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)


def _graph_model(cfg: EvalConfig, workload: Workload, backend: Any, torch_model: Any,
                 loader: Any, out_dir: Path, record: dict[str, Any]) -> Any:
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
    record["onnx"] = info
    graph = backend.load_graph(path, torch_model, spec, args)
    record["env"] = environment(backend.describe())  # the providers the session really uses
    return graph
