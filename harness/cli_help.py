"""Texts of `harness --help`, `harness run --help` and `harness list` for users.

`harness --help` must stay fast and work with a broken plugin, so DESCRIPTION names no
workload. `harness list` and `harness run --help` name the installed workloads and backends
from their declarations, importing none of them (no torch: well under 2 s);
`harness list --details` imports them to show presets and which backends are available.
"""
from __future__ import annotations

from typing import Any

DESCRIPTION = """\
Benchmark perception training on any accelerator, one command per run. `harness run WORKLOAD
--backend BACKEND` trains a workload (2D detection, BEV 3D detection, lanes, lane topology)
on a backend (cpu, cuda, Ascend npu, Gaudi hpu), evaluates it and writes record.json with
its accuracy, training throughput and memory. Then `harness check RECORD` judges it against
the published or measured reference numbers, `harness parity A B` puts runs side by side
(GPU vs accelerator: table and figure), `harness gate` fails CI when a run is slower or
larger than its baseline (or its recent history), and `harness history` shows results per
commit over time. `harness list` names the workloads and backends (`--details`:
which backends are available here, or why not); `harness run --help` lists them too, with
examples."""

EXIT_CODES = """\
exit codes: 0 ok; 1 the run or check failed (or a parity verdict is WORSE); 2 bad usage,
input or plugin; 3 the backend is unavailable here."""

EXAMPLES = """\
examples:
  harness run yolov3                     # smoke preset on the CPU (synthetic COCO), a few minutes
  harness run bevdepth --backend cuda --scale full --data /data/nuscenes --precision bf16 --nproc 8
  harness run matrixvt --backend npu --emulate --steps 20   # portability dry run, no NPU needed"""


def emulate_hint(backend: type[Any]) -> str:
    from harness.plugins import can_emulate

    return ("; try --emulate for a CPU-emulated dry run (speed not meaningful)"
            if can_emulate(backend) else "")


def _workload_entry(name: str, cls: Any) -> dict[str, Any]:
    return {"name": name, "presets": list(cls.presets()), "metrics": dict(cls.metrics),
            "primary_metric": cls.primary_metric, "description": cls.description}


def _backend_entry(name: str, cls: Any) -> dict[str, Any]:
    from harness import plugins

    probe = cls.probe()
    caps = cls.capabilities
    return {"name": name, "available": probe.available, "reason": probe.reason,
            "device_count": probe.device_count, "device_name": probe.device_name,
            "modes": list(caps.modes), "precisions": list(caps.precisions),
            "emulate": plugins.can_emulate(cls),
            "inference_only": cls.inference_only,
            "hint": "" if probe.available else emulate_hint(cls).lstrip("; ")}


def inventory() -> dict[str, list[dict[str, Any]]]:
    """Workloads and backends as installed here, with presets and availability (imports
    every plugin, and torch: `harness list --details`)."""
    from harness import plugins, sources

    return {"workloads": [_workload_entry(n, c) for n, c in plugins.workloads().items()],
            "backends": [_backend_entry(n, c) for n, c in plugins.backends().items()],
            "config_sources": sources.inventory()}


def names() -> dict[str, list[dict[str, Any]]]:
    """Every workload and backend name, without importing a declared plugin (no torch): with
    the plugin that provides it, or the details where that plugin is imported anyway
    (HARNESS_PLUGINS, "harness" entry points). `harness list` and `harness run --help`."""
    from harness import plugins, sources

    def entries(kind: str, detail: Any) -> list[dict[str, Any]]:
        declared = plugins.declared(kind)
        return [detail(n, c) if c is not None else {"name": n, "plugin": _provider(declared[n])}
                for n, c in plugins.catalog(kind).items()]

    return {"workloads": entries("workload", _workload_entry),
            "backends": entries("backend", _backend_entry),
            "config_sources": sources.inventory()}


def _provider(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return f"from {dist.name} {dist.version}" if dist is not None else "built-in"


DETAILS_HINT = ("harness list --details: presets and metrics; which backends are available here "
                "(or why not) and which are inference only; it imports torch and every plugin")


def format_inventory(inv: dict[str, list[dict[str, Any]]]) -> str:
    """Lines of `harness list`; an entry with its name only is listed by name."""
    lines = ["workloads:"]
    for w in inv["workloads"]:
        if "presets" not in w:
            lines.append(f"  {w['name']:<22} {w['plugin']}")
            continue
        lines.append(f"  {w['name']:<22} presets: {', '.join(w['presets'])}; "
                     f"metric {w['primary_metric']}  {w['description']}")
    for src in inv.get("config_sources", []):
        state = "installed" if src["available"] else f"not installed ({src['reason']})"
        lines.append(f"  {src['name']:<22} an OpenMMLab config ({state})")
    lines.append("backends:")
    width = max([6, *(len(b["name"]) for b in inv["backends"])])
    for b in inv["backends"]:
        if "available" not in b:
            lines.append(f"  {b['name']:<{width}} {b['plugin']}")
            continue
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        if b.get("inference_only"):  # listed under `run --help`, which refuses it
            state += " (inference only: harness eval, not run)"
        hint = f"; {b['hint']}" if b["hint"] else ""
        lines.append(f"  {b['name']:<{width}} {state}{hint}; modes {'/'.join(b['modes'])}; "
                     f"precisions {'/'.join(b['precisions'])}")
    if any("presets" not in e for e in inv["workloads"]) or any(
            "available" not in e for e in inv["backends"]):
        lines.append(f"({DETAILS_HINT})")
    return "\n".join(lines)


def run_epilog() -> str:
    return f"{format_inventory(names())}\n\n{EXAMPLES}\n\n{EXIT_CODES}"
