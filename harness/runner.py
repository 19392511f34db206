"""One run: setup -> warmup steps -> timed window -> evaluation -> record.

The harness owns the loop and the clock; the workload owns model, data and metric; the
backend owns the device. Failures of any kind still write record.json with a status.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import signal
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import torch

from harness import plugins
from harness.api import Backend, Workload
from harness.config import (
    DIRECT_FIELDS,
    RunConfig,
    apply_overrides,
    config_to_dict,
    user_set_fields,
)
from harness.errors import BackendUnavailable, Diverged, HarnessError, MissingExtra, RunInterrupted
from harness.records import SCHEMA, environment, write_json_atomic
from harness.strategies import Strategy, choose_strategy
from harness.timing import StepTimer
from harness.training import evaluate, train

DEFAULT_CACHE = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "perception-harness"))


@dataclasses.dataclass
class Run:
    """Everything observers may look at during a run."""

    config: RunConfig
    workload: Workload
    backend: Backend
    strategy: Strategy
    out_dir: Path
    total_steps: int = 0
    steps_per_epoch: int = 0
    step: int = 0
    micro_steps: int = 0
    epoch: int = 0
    started: float = dataclasses.field(default_factory=time.time)
    last_log: dict[str, Any] | None = None  # host values, set at log steps only
    losses: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    timer: StepTimer | None = None
    memory: Any = None  # MemoryStats of the training window
    trained_model: Any = None
    optimizer: Any = None
    model_info: dict[str, Any] | None = None  # params and training FLOPs per sample


def resolve_workload_config(workload_cls: type[Workload], run: RunConfig) -> Any:
    presets = workload_cls.presets()
    if run.scale not in presets:
        from harness.errors import UsageError

        raise UsageError(f"workload {workload_cls.name} has no scale '{run.scale}' "
                         f"(valid: {', '.join(presets)})")
    cfg = presets[run.scale]
    direct = {name: getattr(run, name) for name in DIRECT_FIELDS}
    fields = {f.name for f in dataclasses.fields(cfg)}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in direct.items() if v is not None and k in fields})
    return apply_overrides(cfg, run.overrides)


def instantiate_workload(workload_cls: type[Workload], workload_cfg: Any,
                         user_set: frozenset[str]) -> Workload:
    """The workload with the fields the user set; tolerates plugins whose __init__ predates
    the `user_set` argument (they get the attribute set afterwards)."""
    params = inspect.signature(workload_cls.__init__).parameters
    if "user_set" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return workload_cls(workload_cfg, user_set=user_set)  # type: ignore[call-arg]
    workload = workload_cls(workload_cfg)
    workload.user_set = frozenset(user_set)
    return workload


def check_requirements(workload_cls: type[Workload]) -> None:
    import importlib.util

    missing = [m for m in workload_cls.requires if importlib.util.find_spec(m) is None]
    if missing:
        extra = workload_cls.extra or workload_cls.name
        raise MissingExtra(f"workload {workload_cls.name} needs {', '.join(missing)}: "
                           f"pip install 'perception-harness[{extra}]'")


def prepare_backend(run: RunConfig) -> Backend:
    """Emulate (if asked), validate, set the vendor environment, probe, instantiate."""
    backend_cls = plugins.get_backend(run.backend)
    if run.emulate:
        backend_cls.emulate()
    mode = run.mode or backend_cls.capabilities.default_mode
    backend_cls.validate(mode, run.precision)
    os.environ.update(backend_cls.environment(mode))
    probe = backend_cls.probe()
    if not probe.available:
        hint = ("; for a portability dry run without the hardware add --emulate"
                if plugins.can_emulate(backend_cls) else "")
        raise BackendUnavailable(f"backend {run.backend} is unavailable: {probe.reason}{hint}")
    return backend_cls(mode=mode, emulated=run.emulate)


def default_out_dir(run: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{run.workload}-{run.backend}-{run.precision}-{stamp}"


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (schedulers, CI cancel) ends the run like SIGINT: with a record."""
    def handler(signum: int, frame: Any) -> None:
        raise RunInterrupted(f"received signal {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _base_record(run: Run, workload_cfg: Any) -> dict[str, Any]:
    cfg = run.config
    return {
        "schema": SCHEMA, "kind": "train", "workload": cfg.workload, "scale": cfg.scale,
        "config": {"run": cfg.to_dict(), "workload": config_to_dict(workload_cfg)},
        "backend": cfg.backend, "mode": run.backend.mode, "precision": cfg.precision,
        "weights_dtype": weights_dtype(run.strategy, cfg.precision),
        "strategy": run.strategy.name, "world_size": run.strategy.world_size, "seed": cfg.seed,
        "emulated": run.backend.emulated, "status": "running", "error": None,
        "metrics": {}, "throughput": {}, "memory": {}, "losses": [], "evals": [],
        "model": {"params": None, "train_flops_per_sample": None}, "predictions": None,
        "fallback_ops": [], "env": {},
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": None,
    }


def weights_dtype(strategy: Strategy, precision: str) -> str:
    """The dtype the weights are kept in: fp32 under autocast, the precision itself where the
    strategy casts the model (DeepSpeed bf16/fp16)."""
    if precision != "fp32" and getattr(strategy, "low_precision_weights", False):
        return precision
    return "fp32"


def _status_for(exc: BaseException) -> str:
    if isinstance(exc, Diverged):
        return "diverged"
    if isinstance(exc, (KeyboardInterrupt, RunInterrupted)):
        return "interrupted"
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    return "failed"


def execute(config: RunConfig) -> dict[str, Any]:
    """Run one workload on one backend; return the record (also written to record.json).

    Usage errors found before the run starts raise without a record. Anything after
    that writes the record with its status and then re-raises.
    """
    workload_cls = plugins.get_workload(config.workload)
    check_requirements(workload_cls)
    workload_cfg = resolve_workload_config(workload_cls, config)
    backend = prepare_backend(config)
    pm = plugins.get_plugin_manager()
    pm.hook.harness_configure(config=config)
    strategy = choose_strategy(config)
    out_dir = Path(config.out) if config.out else default_out_dir(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    workload = instantiate_workload(workload_cls, workload_cfg, user_set_fields(config))
    run = Run(config, workload, backend, strategy, out_dir)
    record = _base_record(run, workload_cfg)
    # Only rank 0 owns record.json; other ranks keep theirs beside it for debugging.
    rank = int(os.environ.get("RANK", "0"))
    record_path = out_dir / ("record.json" if rank == 0 else f"record.rank{rank}.json")
    write_json_atomic(record_path, record)
    error: BaseException | None = None
    with _sigterm_as_interrupt():
        try:
            _execute_run(run, record, pm)
            record["status"] = "ok"
        except BaseException as exc:  # noqa: BLE001 - every ending gets a record
            error = exc
            record["status"] = _status_for(exc)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            record["error"] = detail if isinstance(exc, HarnessError) else (
                detail + "\n" + "".join(traceback.format_tb(exc.__traceback__)[-3:]))
        finally:
            _finish_record(run, record)
            write_json_atomic(record_path, record)
            pm.hook.harness_run_end(run=run, record=record)
            backend.close()
            strategy.teardown()
    if error is not None:
        raise error
    return record


def _execute_run(run: Run, record: dict[str, Any], pm: Any) -> None:
    cfg = run.config
    strategy, backend = run.strategy, run.backend
    strategy.setup(backend, cfg, run.workload.config)
    record["world_size"] = strategy.world_size
    device = backend.setup(strategy.local_rank)
    backend.check_precision(cfg.precision)
    record["env"] = environment(backend.describe())
    backend.seed(cfg.seed + strategy.rank)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        backend.deterministic()
    data = run.workload.datasets(cfg.data, Path(cfg.cache_dir) if cfg.cache_dir else DEFAULT_CACHE)
    # datasets() may have resolved config fields from the data: record what was used.
    record["config"]["workload"] = config_to_dict(run.workload.config)
    record["data"] = {"source": data.source, "from_data": dict(data.from_data)}
    record["data_source"] = data.source
    train(run, data, device, pm)
    if run.model_info is not None:
        record["model"] = run.model_info
    if cfg.eval and strategy.is_main:
        metrics, predictions = evaluate(run, data, device)
        record["metrics"] = metrics
        record["predictions"] = write_predictions(run, predictions)
        pm.hook.harness_eval_end(run=run, metrics=metrics)
    if cfg.checkpoint and strategy.is_main:
        save_checkpoint(run, run.out_dir / "checkpoint.pt")


def write_predictions(run: Run, predictions: list[Any]) -> dict[str, Any] | None:
    """The workload's submission file under <out>/predictions; its path relative to the run."""
    pred_dir = run.out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    info = run.workload.write_predictions(predictions, pred_dir.resolve())
    if info is None:
        with contextlib.suppress(OSError):
            pred_dir.rmdir()  # nothing written: no empty folder left behind
        return None
    info = dict(info)
    if info.get("path"):
        path = Path(info["path"])
        if not path.is_absolute():
            path = pred_dir.resolve() / path
        info["path"] = os.path.relpath(path, run.out_dir.resolve())
    return info


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(run: Run, path: Path) -> None:
    """Final weights and optimizer state, on the CPU so any backend can load them."""
    state = {"model": _to_cpu(run.trained_model.state_dict()), "step": run.step,
             "workload": run.config.workload, "workload_config": config_to_dict(run.workload.config)}
    try:
        state["optimizer"] = _to_cpu(run.optimizer.state_dict())
    except Exception:  # noqa: BLE001 - some engines keep optimizer state elsewhere
        pass
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _finish_record(run: Run, record: dict[str, Any]) -> None:
    record["duration_s"] = round(time.time() - run.started, 3)
    record["losses"] = run.losses
    record["evals"] = run.evals
    if run.evals and not record["metrics"]:
        record["metrics"] = run.evals[-1]["metrics"]
    timer = run.timer
    if timer is not None:
        timer.close_window()
        throughput = timer.summary(run.strategy.world_size)
        steps = run.step
        if run.optimizer is not None:  # the engine's own count where it keeps one (DeepSpeed)
            steps = run.strategy.optimizer_steps_taken(run.optimizer, run.step)
        throughput.update(optimizer_steps=steps, micro_steps=run.micro_steps,
                          total_steps=run.total_steps, grad_accum=run.config.grad_accum,
                          step_times_s=[round(t, 6) for t in timer.step_times])
        if run.backend.emulated:
            throughput["meaningful"] = False
            throughput["note"] = "emulated device: speed is the CPU emulation's, not hardware's"
        record["throughput"] = throughput
    try:
        memory = dataclasses.asdict(run.memory or run.backend.memory())
    except Exception as exc:  # noqa: BLE001 - memory is reported, never fatal
        memory = {"error": repr(exc)}
    if run.backend.emulated:
        memory["meaningful"] = False
    record["memory"] = memory
    try:
        record["fallback_ops"] = run.backend.fallback_report()
    except Exception:  # noqa: BLE001
        record["fallback_ops"] = []
