"""Declared contracts (issue 23, items 4 and 8), checked on the source with ast:

(a) the host probes no object with getattr()/hasattr(): an optional capability of a workload,
    backend or strategy is a declared method or attribute with a default (harness/api.py,
    harness/strategies.py, harness/workload_config.py) or a hook (harness/hookspecs.py).
    The rule is the simplest honest one: no getattr(/hasattr( in harness/ at all, except the
    calls listed below, each with why it is not a plugin probe (argparse namespaces, torch
    module wrappers, dataclass fields iterated by name...). hasattr counts too: it is the same
    probe. Calls are matched by file and source text, not by line, so a new call (or a
    changed one) fails until it is declared or listed.
(b) no workload package imports another; the shared packages (datasets/, layers/, drawing/, openmmlab/)
    import no workload package. Every .py file of a package under workloads/ counts, tests
    included (the files directly in workloads/ belong to no package and are not checked).
(c) no import cycle among the modules of harness/, backends/ and workloads/. The graph has an
    edge for every import statement that runs: at module level and inside functions (a
    function-level import still makes the modules depend on each other; hiding a cycle in a
    function is not breaking it). Imports under `if TYPE_CHECKING:` are left out: they never
    run, and they are how annotations of mutually referring types (Run holds a Strategy,
    Strategy.setup takes a Backend) are written. A submodule import is an edge to that module,
    not to its parent packages (every `harness.x` would otherwise depend on harness/__init__).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBES = ("getattr", "hasattr")

# Calls that read an attribute by name from something that is not a plugin object.
NOT_PLUGIN_PROBES: dict[tuple[str, str], str] = {
    ("harness/__init__.py", "getattr(harness.api, name)"): "PEP 562 lazy module attributes",
    ("harness/checking.py", "getattr(row, axis)"): "a reference row's key field, by name",
    ("harness/cli.py", "getattr(args, d)"): "argparse namespace",
    ("harness/cli.py", "getattr(args, dest)"): "argparse namespace",
    ("harness/cli.py", "hasattr(args, dest)"): "argparse namespace",
    ("harness/config.py", "getattr(obj, name)"): "a dataclass field named by a --set key",
    ("harness/config.py", "getattr(cfg, f.name)"): "dataclass fields iterated by name",
    ("harness/config.py", "getattr(run, name)"): "RunConfig fields named in DIRECT_FIELDS",
    ("harness/config_flags.py", "hasattr(args, f.name)"): "argparse namespace",
    ("harness/config_flags.py", "getattr(args, f.name)"): "argparse namespace",
    ("harness/cli_help.py", "getattr(ep, 'dist', None)"):
        "importlib.metadata entry point (no dist on older Pythons)",
    ("harness/plugins.py", "getattr(pm.hook, _HOOK[kind])"): "pluggy's hook relay, by hook name",
    ("harness/records.py", "getattr(self, f.name)"): "the record's own fields, by name",
    ("harness/resume_changes.py", "getattr(scheduler, 'base_lrs', old_base)"):
        "a torch LR scheduler's base rates (not a plugin object's capability)",
    ("harness/resume_changes.py", "getattr(scheduler, '_get_closed_form_lr', None)"):
        "torch's closed-form schedules (MultiStepLR...), where the scheduler class has one",
    ("harness/workload_config.py", "getattr(config, name, getattr(WorkloadConfig, name))"):
        "a declared config field, with its declared default for configs that predate it",
    ("harness/workload_config.py", "getattr(WorkloadConfig, name)"): "the declared default",
    ("harness/deepspeed_strategy.py", "getattr(importlib.import_module(module), name)"):
        "DeepSpeed's classes by module and name, absent in other DeepSpeed versions",
    ("harness/deepspeed_strategy.py", "getattr(self._inner, name)"):
        "__getattr__ delegation to the wrapped DeepSpeed checkpoint engine",
    ("harness/deepspeed_strategy.py", "getattr(self.engine, 'destroy', None)"):
        "DeepSpeed engine API that older DeepSpeed versions lack",
    ("harness/launch.py", "getattr(args, 'resume', None)"): "argparse namespace",
    ("harness/memory.py", "hasattr(os, 'sysconf')"): "platform check (no sysconf on Windows)",
    ("harness/numerics.py", "hasattr(obj, '_fields')"): "namedtuple batches",
    ("harness/plugins.py", "hasattr(exc, 'plugin')"): "pluggy's validation error",
    ("harness/prepare.py", "getattr(run, name)"): "RunConfig fields named in DIRECT_FIELDS",
    ("harness/prepare.py", "hasattr(torch, 'accelerator')"): "torch version check",
    ("harness/profiling.py", "getattr(module, 'module', None)"): "DDP's torch module wrapper",
    ("harness/profiling.py", "getattr(module, '_orig_mod', None)"): "torch.compile's wrapper",
    ("harness/profiling.py", "getattr(evt, 'device_time_total', 0.0)"):
        "torch profiler event field that older torch versions lack",
    ("harness/pytest_plugin.py", "getattr(exc, 'exit_code', EXIT_UNAVAILABLE)"):
        "an exception's exit code",
    ("harness/records.py", "hasattr(value, 'item')"): "numpy and torch scalars",
    ("harness/reference.py", "getattr(self, a)"): "the row's own key fields, by name",
    ("harness/resume.py", "hasattr(config, k)"): "RunConfig fields named by a record",
    ("harness/resume.py", "getattr(config, k)"): "RunConfig fields named by a record",
    ("harness/run_checks.py", "getattr(args, dest, None)"): "argparse namespace",
    ("harness/run_checks.py", "getattr(args, 'seed', None)"): "argparse namespace",
    ("harness/run_checks.py", "getattr(exc, 'harness_record', None)"):
        "the record path an exception carries",
    ("harness/strategies.py", "getattr(model, 'module', model)"): "DDP's torch module wrapper",
    ("harness/strategies.py", "getattr(inner, '_orig_mod', inner)"): "torch.compile's wrapper",
    ("harness/strategies.py", "getattr(model, 'no_sync', None)"): "DDP's torch module wrapper",
    ("harness/training.py", "hasattr(obj, '_fields')"): "namedtuple batches",
    ("harness/training.py", "getattr(a, f.name)"): "MemoryStats fields iterated by name",
    ("harness/training.py", "getattr(b, f.name)"): "MemoryStats fields iterated by name",
}

# openmmlab: the portable mmcv ops and their import shim, which any code that imports mmdet
# (the mmdet: source, yolov3's comparisons with mmdet's own model) needs.
SHARED_PACKAGES = ("datasets", "layers", "drawing", "openmmlab")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _probes(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [(node.lineno, ast.unparse(node)) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in PROBES]


def _call_key(source: str) -> str:
    """getattr(obj, 'name', default) -> the allowlist's text: the call as ast.unparse
    writes it (quotes normalised)."""
    return ast.unparse(ast.parse(source, mode="eval").body)


def test_the_host_probes_no_plugin_object() -> None:
    listed = NOT_PLUGIN_PROBES
    unlisted, used = [], set()
    for path in sorted((ROOT / "harness").rglob("*.py")):
        for line, call in _probes(path):
            key = (_rel(path), call)
            if key in listed:
                used.add(key)
            else:
                unlisted.append(f"{_rel(path)}:{line}: {call}")
    assert not unlisted, ("attribute probes in harness/ (declare the capability with a default "
                          "in harness/api.py or harness/strategies.py, or a hook, and call it; "
                          "list it here only if it is not a plugin object):\n"
                          + "\n".join(unlisted))
    stale = sorted(f"{path}: {call}" for path, call in set(listed) - used)
    assert not stale, "allowlisted calls that are gone (remove them from the lists):\n" + "\n".join(stale)


def test_the_allowlist_keys_are_written_as_ast_writes_them() -> None:
    for _, call in NOT_PLUGIN_PROBES:
        assert _call_key(call) == call, call


def _imported_modules(path: Path, *, type_checking: bool = False, in_functions: bool = True,
                      package: list[str] | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, relative ones resolved
    against `package` (default: the file's own); `from a import b` gives both `a` and `a.b`
    (b may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    if package is None:
        package = list(path.relative_to(ROOT).parts[:-1])
    found: list[tuple[int, str]] = []

    def is_type_checking(test: ast.expr) -> bool:
        return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
                or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))

    def visit(node: ast.AST, in_function: bool, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_function = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            # Only the body of `if TYPE_CHECKING:` is guarded, not its else branch.
            if isinstance(child, ast.If) and is_type_checking(child.test):
                for stmt in child.body:
                    visit_one(stmt, child_function, True)
                for stmt in child.orelse:
                    visit_one(stmt, child_function, guarded)
                continue
            visit_one(child, child_function, guarded)

    def visit_one(node: ast.AST, in_function: bool, guarded: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if (guarded and not type_checking) or (in_function and not in_functions):
                return
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name) for alias in node.names)
            else:
                base = node.module or ""
                if node.level:
                    anchor = package[:len(package) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.append((node.lineno, base))
                found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
            return
        visit(node, in_function or isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)), guarded)

    visit(tree, False, False)
    return found


def _workload_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "workloads" else None


def test_no_workload_imports_another() -> None:
    packages = sorted(p.name for p in (ROOT / "workloads").iterdir()
                      if p.is_dir() and (p / "__init__.py").is_file())
    workloads = [p for p in packages if p not in SHARED_PACKAGES]
    assert {"yolov3", "bevdepth", "streampetr"} <= set(workloads)  # the walk sees them
    crossing = []
    for path in sorted((ROOT / "workloads").rglob("*.py")):
        if path.parent == ROOT / "workloads":
            continue  # workloads/__init__.py and the suite-wide test_benchmarks.py: no package
        own = path.relative_to(ROOT / "workloads").parts[0]
        for line, module in _imported_modules(path, type_checking=True):
            other = _workload_package(module)
            if other in workloads and other != own:
                crossing.append(f"{_rel(path)}:{line}: imports {module}")
    assert not crossing, ("workload code shared between workloads belongs in workloads/"
                          f"{{{','.join(SHARED_PACKAGES)}}}:\n" + "\n".join(sorted(set(crossing))))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    files = [p for top in ("harness", "backends", "workloads") for p in (ROOT / top).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for _, imported in _imported_modules(path):
            while imported and imported not in modules:  # `from m import function` -> m
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                edges.add(imported)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path back to its start) per strongly connected component of two or
    more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_path_in(graph, component) for component in components]


def _path_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, for the message."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return sorted(component)


def test_no_import_cycles() -> None:
    graph = _import_graph()
    assert "harness.api" in graph and graph["harness.prepare"]  # the walk sees the host
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _cycles(graph) == expected


def test_function_level_imports_count_and_type_checking_ones_do_not(tmp_path: Path) -> None:
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from harness.api import Run\n"
              "else:\n    import harness.errors\n"
              "def f():\n    from harness.strategies import Strategy\n"
              "from . import show_context\n")
    path = tmp_path / "m.py"
    path.write_text(source, encoding="utf-8")
    found = {m for _, m in _imported_modules(path, package=["harness"])}
    assert {"harness.strategies", "harness.errors", "harness.show_context"} <= found
    assert "harness.api" not in found
    assert "harness.strategies" not in {m for _, m in _imported_modules(
        path, package=["harness"], in_functions=False)}


def test_probes_are_found_with_their_text(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("x = getattr(workload, \"console_style\", '')\ny = hasattr(b, 'p')\n",
                    encoding="utf-8")
    assert _probes(path) == [(1, "getattr(workload, 'console_style', '')"),
                             (2, "hasattr(b, 'p')")]


# ----------------------------------------------------------------- the declared defaults
def test_workload_defaults_and_the_built_in_overrides() -> None:
    import torch

    from harness.api import Workload
    from harness.errors import UsageError
    from harness.strategies import Strategy
    from harness.workload_config import WorkloadConfig
    from tests.tiny_workload import TinyConfig, TinyWorkload

    tiny = TinyWorkload(TinyConfig())
    assert not tiny.splits_predict() and tiny.state_dict() is None
    assert tiny.console_line(None, {}) is None and tiny.memory_hints() == []  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="has no load_state_dict"):
        tiny.load_state_dict({"x": 1})
    with pytest.raises(NotImplementedError):
        tiny.forward_for_eval(torch.nn.Identity(), None)
    assert type(tiny.strategy) is Strategy and tiny.strategy.world_size == 1

    yolo = pytest.importorskip("workloads.yolov3")
    wl = yolo.YOLOv3Workload(yolo.YOLOv3Workload.presets()["smoke"])
    assert wl.splits_predict() and isinstance(wl.config, WorkloadConfig)
    # A split override of one half only is not a split.
    half = type("Half", (TinyWorkload,), {"forward_for_eval": lambda self, m, b: m(b)})
    assert not half(TinyConfig()).splits_predict()
    assert type(wl).postprocess is not Workload.postprocess


def test_workload_config_defaults_keep_the_config_field_order() -> None:
    import dataclasses

    from harness.workload_config import WorkloadConfig

    @dataclasses.dataclass(frozen=True)
    class Own(WorkloadConfig):
        lr: float = 0.1
        batch_size: int = 4

    cfg = Own()
    assert [f.name for f in dataclasses.fields(cfg)] == ["lr", "batch_size"]
    assert (cfg.batch_size, cfg.eval_batch_size, cfg.steps, cfg.grad_clip, cfg.num_workers) == (
        4, 1, 0, None, 0)
    assert dataclasses.replace(cfg, batch_size=2).batch_size == 2
    cfg.validate()  # no rules by default


def test_backend_defaults_and_the_inference_only_backend() -> None:
    from harness import plugins
    from harness.errors import UsageError

    cpu_cls = plugins.get_backend("cpu")
    cpu = cpu_cls()
    assert not cpu_cls.inference_only and cpu.label() == "cpu"
    assert not cpu_cls.can_emulate()
    with pytest.raises(UsageError, match="not exported graphs"):
        cpu.load_graph(Path("m.onnx"), None, None, ())  # type: ignore[arg-type]
    assert plugins.get_backend("npu").can_emulate()
    ort = plugins.get_backend("onnxruntime")
    assert ort.inference_only
    backend = ort()
    backend.providers = ["CPUExecutionProvider"]
    assert backend.label() == "onnxruntime (CPUExecutionProvider)"


def test_strategy_defaults() -> None:
    import torch

    from harness.strategies import DDPStrategy, Strategy

    single = Strategy()
    assert not single.low_precision_weights and not DDPStrategy.low_precision_weights
    value = torch.tensor(3.0)
    assert single.mean_across_ranks(value) is value  # identity, no copy, no collective
    from harness.deepspeed_strategy import DeepSpeedStrategy  # importable without deepspeed

    assert DeepSpeedStrategy.low_precision_weights


def test_the_console_takes_the_workloads_line(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from harness.console import ConsoleObserver

    class Seedy:
        def console_line(self, run: object, row: dict) -> str:
            return f"seed line {row['step']}"

    row = {"step": 3, "epoch": 0, "iter_time": 0.1, "data_time": 0.0, "loss": 1.0}
    run = SimpleNamespace(strategy=SimpleNamespace(is_main=True), last_log=row, total_steps=9,
                          workload=Seedy(), timer=None, started=0.0)
    observer = ConsoleObserver()
    observer.tty = False
    observer.harness_step_end(run, 3)  # type: ignore[arg-type]
    assert capsys.readouterr().out == "seed line 3\n"
