"""Texts of `harness --help`, `harness run --help` and `harness list` for users.

`harness --help` must stay fast and work with a broken plugin, so DESCRIPTION names no
workload; `harness run --help` loads the plugins and lists what is installed and available.
"""
from __future__ import annotations

from typing import Any

DESCRIPTION = """\
Benchmark perception training on any accelerator, one command per run. `harness run WORKLOAD
--backend BACKEND` trains a workload (2D detection, BEV 3D detection, lanes, lane topology)
on a backend (cpu, cuda, Ascend npu, Gaudi hpu), evaluates it and writes record.json with
its accuracy, training throughput and memory. Then `harness check RECORD` judges it against
the published or measured reference numbers, `harness parity A B` puts runs side by side
(GPU vs accelerator: table and figure), and `harness gate` fails CI when a run is slower or
larger than its baseline. `harness list` shows the workloads and which backends are
available here; `harness run --help` lists them with examples."""

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


def inventory() -> dict[str, list[dict[str, Any]]]:
    """Workloads and backends as installed here (loads the plugins)."""
    from harness import plugins

    workloads = [{"name": n, "presets": list(c.presets()), "metrics": dict(c.metrics),
                  "primary_metric": c.primary_metric, "description": c.description}
                 for n, c in plugins.workloads().items()]
    backends = []
    for name, cls in plugins.backends().items():
        probe = cls.probe()
        caps = cls.capabilities
        backends.append({"name": name, "available": probe.available, "reason": probe.reason,
                         "device_count": probe.device_count, "device_name": probe.device_name,
                         "modes": list(caps.modes), "precisions": list(caps.precisions),
                         "emulate": plugins.can_emulate(cls),
                         "inference_only": bool(getattr(cls, "inference_only", False)),
                         "hint": "" if probe.available else emulate_hint(cls).lstrip("; ")})
    return {"workloads": workloads, "backends": backends}


def format_inventory(inv: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["workloads:"]
    for w in inv["workloads"]:
        lines.append(f"  {w['name']:<22} presets: {', '.join(w['presets'])}; "
                     f"metric {w['primary_metric']}  {w['description']}")
    lines.append("backends:")
    width = max([6, *(len(b["name"]) for b in inv["backends"])])
    for b in inv["backends"]:
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        if b.get("inference_only"):  # listed under `run --help`, which refuses it
            state += " (inference only: harness eval, not run)"
        hint = f"; {b['hint']}" if b["hint"] else ""
        lines.append(f"  {b['name']:<{width}} {state}{hint}; modes {'/'.join(b['modes'])}; "
                     f"precisions {'/'.join(b['precisions'])}")
    return "\n".join(lines)


def run_epilog() -> str:
    return f"{format_inventory(inventory())}\n\n{EXAMPLES}\n\n{EXIT_CODES}"
