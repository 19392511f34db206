"""`--profile` (run and eval): a torch.profiler trace of a few timed steps, with named ranges
per model component, and a per-component time table in the record and on the console.

Ranges come through `backend.trace(name)` (record_function on the CPU; nvtx on CUDA; mstx on
NPU), so the same names show in the vendor's own profiler. The harness already opens
"forward", "backward", "optimizer" (run) and "eval_data", "eval_forward",
"eval_postprocess" / "eval_predict" (eval); while profiling, every direct child of the model (backbone, neck,
head...) gets its own range "model.<child>" through global module hooks, so no workload needs
to change. Backward is one range: autograd runs outside module calls.

`harness run --profile` is a built-in plugin (hooks below): it profiles `--profile-steps`
steps right after the warmup; those steps are inside the timed window, so the run's
throughput includes the profiler's overhead (the record's "profile" says so).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from harness import hookimpl
from harness.records import Record, write_record

if TYPE_CHECKING:
    import torch

    from harness.api import Backend

# Not "ProfilerStep#": torch.profiler reserves that name for its own schedule.
STEP_PREFIX = "harness_step#"
TRACE_NAME = "profile_trace.json"


def _inner(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (.module) / torch.compile (._orig_mod) wrappers."""
    import torch  # here: this plugin's --help options must not import torch

    seen = 0
    while seen < 4 and isinstance(getattr(module, "module", None) or getattr(module, "_orig_mod", None),
                                  torch.nn.Module):
        module = getattr(module, "module", None) or module._orig_mod  # type: ignore[assignment]
        seen += 1
    return module


@contextlib.contextmanager
def component_ranges(backend: Backend) -> Iterator[None]:
    """A named range around each call of a direct child of the outermost module called."""
    import torch

    names: dict[int, str] = {}
    open_ranges: dict[int, list[contextlib.ExitStack]] = {}
    depth = [0]

    def pre(module: torch.nn.Module, args: Any) -> None:
        if depth[0] == 0:  # an outermost call: name the children of the model inside it
            for child_name, child in _inner(module).named_children():
                names.setdefault(id(child), f"model.{child_name}")
        depth[0] += 1
        name = names.get(id(module))
        if name is not None:
            stack = contextlib.ExitStack()
            stack.enter_context(backend.trace(name))
            open_ranges.setdefault(id(module), []).append(stack)

    def post(module: torch.nn.Module, args: Any, output: Any) -> None:
        depth[0] = max(0, depth[0] - 1)
        stacks = open_ranges.get(id(module))
        if stacks:
            stacks.pop().close()

    handles = [torch.nn.modules.module.register_module_forward_pre_hook(pre),
               torch.nn.modules.module.register_module_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for stacks in open_ranges.values():  # a forward that raised never ran its post hook
            while stacks:
                stacks.pop().close()


def _record_function(name: str) -> Any:
    import torch

    return torch.profiler.record_function(name)


class StepProfiler:
    """Profiles `steps` consecutive steps (start(), step() after each, then table())."""

    def __init__(self, backend: Backend, out_dir: Path, steps: int = 3) -> None:
        self.backend = backend
        self.out_dir = Path(out_dir)
        self.steps = max(1, steps)
        self.done = 0
        self._prof: Any = None
        self._ranges: Any = None
        self.result: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self._prof is not None

    def start(self) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.backend.device_type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._ranges = component_ranges(self.backend)
        self._ranges.__enter__()
        self._prof = torch.profiler.profile(activities=activities, record_shapes=False)
        self._prof.__enter__()
        self._step_range = torch.profiler.record_function(f"{STEP_PREFIX}{self.done}")
        self._step_range.__enter__()

    def step(self) -> bool:
        """Close one profiled step; returns True when the last one is done (then stopped)."""
        if self._prof is None:
            return False
        self.backend.synchronize()
        self._step_range.__exit__(None, None, None)
        self.done += 1
        if self.done >= self.steps:
            self.stop()
            return True
        self._step_range = _record_function(f"{STEP_PREFIX}{self.done}")
        self._step_range.__enter__()
        return False

    def stop(self) -> None:
        if self._prof is None:
            return
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        self._ranges.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        trace = self.out_dir / TRACE_NAME
        prof.export_chrome_trace(str(trace))
        self.result = summarize(prof.key_averages(), self.done, trace.name)

    def console(self) -> str:
        return format_table(self.result) if self.result else "[harness] profile: no steps"


def summarize(averages: Any, steps: int, trace: str) -> dict[str, Any]:
    """ms per step of each named range; the model's children split the forward range."""
    def total_ms(evt: Any) -> float:
        device = getattr(evt, "device_time_total", 0.0) or 0.0
        return max(float(evt.cpu_time_total), float(device)) / 1e3

    ranges = {e.key: total_ms(e) for e in averages}
    step_ms = sum(v for k, v in ranges.items() if k.startswith(STEP_PREFIX)) / max(steps, 1)
    per_step = {k: v / max(steps, 1) for k, v in ranges.items()}
    model = {k: v for k, v in per_step.items() if k.startswith("model.")}
    rows: list[dict[str, Any]] = []
    top = [n for n in ("data", "forward", "backward", "optimizer", "eval_data", "eval_forward",
                       "eval_postprocess", "eval_predict") if n in per_step]
    for name in top:
        if name in ("forward", "eval_forward", "eval_predict") and model:
            rows += [{"component": k, "ms": v}
                     for k, v in sorted(model.items(), key=lambda kv: -kv[1])]
            rest = per_step[name] - sum(model.values())
            rows.append({"component": f"{name} (rest: loss, glue)" if name == "forward"
                         else f"{name} (rest)", "ms": max(rest, 0.0)})
            model = {}
        else:
            rows.append({"component": name, "ms": per_step[name]})
    named = sum(r["ms"] for r in rows)
    rows.append({"component": "other (outside the named ranges)",
                 "ms": max(step_ms - named, 0.0)})
    for r in rows:
        r["ms"] = round(r["ms"], 3)
        r["fraction"] = round(r["ms"] / step_ms, 4) if step_ms else None
    return {"trace": trace, "steps": steps, "step_ms": round(step_ms, 3), "components": rows,
            "named_fraction": round(named / step_ms, 4) if step_ms else None}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"[harness] profile: {result['steps']} steps, {result['step_ms']:.1f} ms/step, "
             f"trace {result['trace']}"]
    for r in result["components"]:
        frac = f"{r['fraction']:6.1%}" if r["fraction"] is not None else "     -"
        lines.append(f"  {r['component']:<40} {r['ms']:10.2f} ms  {frac}")
    return "\n".join(lines)


# ------------------------------------------------------------- `harness run --profile`
_RUN_PROFILER: StepProfiler | None = None


@hookimpl
def harness_addoption(parser: Any) -> None:
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler trace of a few timed steps (<out>/profile_trace.json) "
                             "and a per-component time table in the record")
    parser.add_argument("--profile-steps", type=int, default=3, help="steps to profile")


@hookimpl
def harness_step_end(run: Any, step: int) -> None:
    global _RUN_PROFILER
    if not run.config.option("profile") or not run.strategy.is_main:
        return
    warmup = run.timer.warmup_steps if run.timer is not None else 0
    if _RUN_PROFILER is None and step == max(warmup, 1) and step < run.total_steps:
        _RUN_PROFILER = StepProfiler(run.backend, run.out_dir, run.config.option("profile_steps", 3))
        _RUN_PROFILER.start()
    elif _RUN_PROFILER is not None and _RUN_PROFILER.active:
        if _RUN_PROFILER.step():
            print(_RUN_PROFILER.console(), flush=True)


@hookimpl
def harness_run_end(run: Any, record: Record) -> None:
    global _RUN_PROFILER
    prof, _RUN_PROFILER = _RUN_PROFILER, None
    if prof is None:
        return
    prof.stop()  # a run shorter than the profiled steps: what was recorded
    if prof.result is None:
        return
    record.profile = {**prof.result, "note": "profiled steps are inside the timed window: "
                                             "throughput includes the profiler's overhead"}
    write_record(run.record_path or Path(run.out_dir) / "record.json", record)
