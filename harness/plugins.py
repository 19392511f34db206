"""The plugin manager: built-in plugin modules plus third-party entry points "harness".

Loaded on first use only (the verbs list, run, eval and export), never by `harness --help`,
check, parity or gate, so a broken third-party plugin cannot break those; where it is
loaded, a plugin that fails to import is a one-line error naming it (exit 2), and a hook
implementation that raises names its plugin and the hook.
"""
from __future__ import annotations

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

# Built-in plugins, by module name. Each module holds its own @hookimpl functions.
BUILTINS: tuple[str, ...] = (
    "harness.console",
    "harness.profiling",
    "backends.cpu",
    "backends.cuda",
    "backends.npu",
    "backends.hpu",
    "backends.onnxruntime",
    "workloads.yolov3",
    "workloads.bevdepth",
    "workloads.lane_multitask",
    "workloads.openlanev2_topology",
    "workloads.streampetr",
)


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


def _naming(function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any) -> Any:
        try:
            return function(*args)
        except (HarnessError, MemoryError):  # deliberate messages and OOM keep their meaning
            raise
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
    from harness.api import Backend

    return getattr(backend.emulate, "__func__", None) is not Backend.emulate.__func__  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    pm = _PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    for name in BUILTINS:
        pm.register(_load_module(name, "built-in"), name=name)
    # Like PYTEST_PLUGINS: extra plugin modules by name, for tests and local experiments.
    for name in filter(None, os.environ.get("HARNESS_PLUGINS", "").split(",")):
        if not pm.has_plugin(name.strip()):
            pm.register(_load_module(name.strip(), "HARNESS_PLUGINS"), name=name.strip())
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:
            raise PluginLoadError(
                f"plugin {ep.name!r} (entry point {ep.value} from "
                f"{ep.dist.name if ep.dist else 'unknown'}) failed to import: {exc!r}"
            ) from exc
        pm.register(plugin, name=ep.name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = (pm.get_name(exc.plugin) if hasattr(exc, "plugin") else None) or "?"
        raise PluginLoadError(f"plugin {name!r} implements an unknown hook: {exc}") from exc
    return pm


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


def backends() -> dict[str, type[Backend]]:
    return _collect(get_plugin_manager().hook.harness_backends(), "backend")


def workloads() -> dict[str, type[Workload]]:
    return _collect(get_plugin_manager().hook.harness_workloads(), "workload")


def get_backend(name: str) -> type[Backend]:
    found = backends()
    if name not in found:
        raise UsageError(f"unknown backend '{name}' (valid: {', '.join(found)})")
    return found[name]


def get_workload(name: str) -> type[Workload]:
    found = workloads()
    if name not in found:
        raise UsageError(f"unknown workload '{name}' (valid: {', '.join(found)})")
    return found[name]
