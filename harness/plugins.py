"""The plugin manager: the host's plugins, workload and backend plugins by name, and
third-party plugins (entry points, HARNESS_PLUGINS).

Workloads and backends are declared by name: the built-in ones below, third-party ones as
entry points of the groups "harness.workloads" / "harness.backends" (name = the workload or
backend, value = the plugin module that provides it). A declared plugin is imported only when
its workload or backend is used (`harness run yolov3` imports workloads.yolov3 and
backends.cpu, not the others), so listing names (`harness list`, `harness run --help`) needs
no import, no torch. Plugins under the group "harness" and in HARNESS_PLUGINS are imported
whenever plugins are loaded (the verbs list, run, eval and export), never by `harness --help`,
check, parity or gate, so a broken third-party plugin cannot break those; where it is
loaded, a plugin that fails to import is a one-line error naming it (exit 2), and a hook
implementation that raises names its plugin and the hook.

Options that plugins add to `harness run` (harness_addoption) come from the plugins loaded
when its parser is built: the host's, HARNESS_PLUGINS and the "harness" group.
"""
from __future__ import annotations

import errno
import functools
import importlib
import os
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable

import pluggy

from harness import hookspecs
from harness.errors import HarnessError, UsageError

if TYPE_CHECKING:
    from harness.api import Backend, Workload

ENTRY_POINT_GROUP = "harness"
# Entry-point groups that declare a workload or backend by name (value: its plugin module).
NAMED_GROUPS = {"workload": "harness.workloads", "backend": "harness.backends"}

# The host's own plugins (console lines, `--profile`, `--track`): loaded with the plugin
# manager.
HOST_PLUGINS: tuple[str, ...] = ("harness.console", "harness.profiling", "harness.tracking")

# Built-in workloads and backends: name -> the plugin module that provides it.
BUILTIN_WORKLOADS: dict[str, str] = {
    "bevdepth": "workloads.bevdepth",
    "matrixvt": "workloads.bevdepth",
    "lanes": "workloads.lane_multitask",
    "openlanev2": "workloads.openlanev2_topology",
    "streampetr": "workloads.streampetr",
    "yolov3": "workloads.yolov3",
}
BUILTIN_BACKENDS: dict[str, str] = {
    "cpu": "backends.cpu",
    "cuda": "backends.cuda",
    "hpu": "backends.hpu",
    "npu": "backends.npu",
    "onnxruntime": "backends.onnxruntime",
}
_BUILTIN = {"workload": BUILTIN_WORKLOADS, "backend": BUILTIN_BACKENDS}
_HOOK = {"workload": "harness_workloads", "backend": "harness_backends"}


class PluginLoadError(UsageError):
    """A plugin failed to import or to register; the message names it (exit 2: the user
    fixes it by repairing, uninstalling or unlisting the plugin)."""


class PluginHookError(HarnessError):
    """A plugin's hook implementation raised; the message names the plugin and the hook."""


def _load_module(name: str, origin: str) -> object:
    try:
        return importlib.import_module(name)
    # SystemExit too: a plugin calling sys.exit() at import must not end harness silently.
    except (Exception, SystemExit) as exc:  # a broken plugin must name itself, never vanish
        raise PluginLoadError(f"plugin {name!r} ({origin}) failed to import: {exc!r}") from exc


# A hook's OSError with one of these is about the disk it writes to (log.jsonl on a full
# disk), answered as the file error it is rather than as the plugin's failure.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _naming(function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any) -> Any:
        try:
            return function(*args)
        except (HarnessError, MemoryError):  # deliberate messages and OOM keep their meaning
            raise
        except OSError as exc:
            if exc.errno in _DISK_ERRNOS:  # the disk's state, not the plugin's bug: the
                raise  # CLI's one line names the file (harness/run_checks.py)
            raise PluginHookError(f"plugin {plugin!r} hook {hook} raised {exc!r}") from exc
        except (Exception, SystemExit) as exc:
            raise PluginHookError(f"plugin {plugin!r} hook {hook} raised {exc!r}") from exc

    return call


class _PluginManager(pluggy.PluginManager):
    """Every plain hook implementation is wrapped so that an exception it raises names its
    plugin and hook (wrappers are generators and are left alone)."""

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        for caller in self.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                    impl.function = _naming(impl.function, impl.plugin_name, caller.name)  # type: ignore[misc]
        return registered


def can_emulate(backend: type[Backend]) -> bool:
    """Whether the backend offers a CPU-emulated device (`--emulate`)."""
    return backend.can_emulate()


def _load_entry_point(ep: metadata.EntryPoint) -> Any:
    try:
        return ep.load()
    except (Exception, SystemExit) as exc:
        raise PluginLoadError(
            f"plugin {ep.name!r} (entry point {ep.value} from "
            f"{ep.dist.name if ep.dist else 'unknown'}) failed to import: {exc!r}"
        ) from exc


def _register_undeclared(pm: pluggy.PluginManager) -> None:
    """HARNESS_PLUGINS and the "harness" entry points: plugins whose workloads and backends
    (if any) are known only once imported."""
    # Like PYTEST_PLUGINS: extra plugin modules by name, for tests and local experiments.
    for name in filter(None, os.environ.get("HARNESS_PLUGINS", "").split(",")):
        if not pm.has_plugin(name.strip()):
            pm.register(_load_module(name.strip(), "HARNESS_PLUGINS"), name=name.strip())
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not pm.has_plugin(ep.name):
            pm.register(_load_entry_point(ep), name=ep.name)
    _check_pending(pm)


def _check_pending(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = (pm.get_name(exc.plugin) if hasattr(exc, "plugin") else None) or "?"
        raise PluginLoadError(f"plugin {name!r} implements an unknown hook: {exc}") from exc


@functools.lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The host's plugins and the undeclared ones; declared workload and backend plugins
    join it when used (get_workload, get_backend, workloads, backends)."""
    pm = _PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    for name in HOST_PLUGINS:
        pm.register(_load_module(name, "built-in"), name=name)
    _register_undeclared(pm)
    return pm


def declared(kind: str) -> dict[str, metadata.EntryPoint]:
    """Workloads or backends (`kind`) declared by name, without importing them: the built-in
    ones and the entry points of NAMED_GROUPS[kind]. Two plugins declaring one name: error."""
    group = NAMED_GROUPS[kind]
    found = {name: metadata.EntryPoint(name, module, group)
             for name, module in _BUILTIN[kind].items()}
    for ep in metadata.entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            raise PluginLoadError(f"two plugins provide {kind} {ep.name!r}: "
                                  f"{found[ep.name].value} and {ep.value}")
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def _register_declared(pm: pluggy.PluginManager, ep: metadata.EntryPoint) -> None:
    if pm.has_plugin(ep.value):
        return
    plugin = _load_entry_point(ep)
    if not pm.is_registered(plugin):  # also listed in HARNESS_PLUGINS, say
        pm.register(plugin, name=ep.value)
        _check_pending(pm)


def _collect(hook_results: list[list[Any]], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for group in hook_results:
        for cls in group:
            if cls.name in found and found[cls.name] is not cls:
                raise PluginLoadError(
                    f"two plugins provide {kind} {cls.name!r}: "
                    f"{found[cls.name].__module__} and {cls.__module__}"
                )
            found[cls.name] = cls
    return dict(sorted(found.items()))


def _loaded(pm: pluggy.PluginManager, kind: str) -> dict[str, Any]:
    return _collect(getattr(pm.hook, _HOOK[kind])(), kind)


def catalog(kind: str) -> dict[str, Any]:
    """Every workload or backend name, without importing a declared plugin: name -> its class
    where its plugin is imported anyway (HARNESS_PLUGINS, the "harness" group), else None.
    Neither the host's plugins nor torch are loaded for it (`harness list`)."""
    pm = _PluginManager("harness")  # a throwaway manager: no host plugins, nothing declared
    pm.add_hookspecs(hookspecs)
    _register_undeclared(pm)
    found: dict[str, Any] = dict.fromkeys(declared(kind))
    found.update(_loaded(pm, kind))
    return dict(sorted(found.items()))


def _all(kind: str) -> dict[str, Any]:
    pm = get_plugin_manager()
    for ep in declared(kind).values():
        _register_declared(pm, ep)
    return _loaded(pm, kind)


def _get(kind: str, name: str) -> Any:
    pm = get_plugin_manager()
    named = declared(kind)
    if name in named:
        _register_declared(pm, named[name])
    found = _loaded(pm, kind)
    if name in found:
        return found[name]
    if name in named:
        raise PluginLoadError(f"plugin {named[name].value} is declared to provide {kind} "
                              f"{name!r} but does not (it provides: {', '.join(found) or 'none'})")
    valid = sorted({*named, *found})
    raise UsageError(f"unknown {kind} '{name}' (valid: {', '.join(valid)})")


def backends() -> dict[str, type[Backend]]:
    """Every backend class (imports every backend plugin)."""
    return _all("backend")


def workloads() -> dict[str, type[Workload]]:
    """Every workload class (imports every workload plugin, and with them torch)."""
    return _all("workload")


def get_backend(name: str) -> type[Backend]:
    """The backend `name`, importing its plugin only."""
    return _get("backend", name)  # type: ignore[no-any-return]


def get_workload(name: str) -> type[Workload]:
    """The workload `name`, importing its plugin only; `mmdet:CONFIG.py` and
    `mmdet3d:CONFIG.py` build one from an OpenMMLab config."""
    from harness.sources import is_config_source

    if is_config_source(name):
        from workloads.openmmlab.workload import config_workload

        return config_workload(name)
    return _get("workload", name)  # type: ignore[no-any-return]
