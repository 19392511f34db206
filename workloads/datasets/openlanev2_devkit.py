"""The official OpenLane-V2 devkit (`openlanev2` 2.1.0 on PyPI): import it, collect, score.

Two install traps are handled here, never by copying devkit code:

- Its metadata pins scipy==1.8.0, ortools==9.2.9972, shapely==2.0.0 and numpy<1.24, which have
  no wheels for Python 3.11, so it is installed with `--no-deps` and its real runtime imports
  (scipy, shapely, ortools, similaritymeasures, iso3166, opencv, tqdm) come from the
  `openlanev2` extra at current versions (INSTALL_COMMAND below).
- Its F-score module does `from ortools.graph import pywrapgraph` (removed from ortools in 9.4+;
  the min-cost-flow solver moved to `ortools.graph.python.min_cost_flow` with snake_case
  method names). `install_pywrapgraph_shim()` registers a small module under the old name whose
  SimpleMinCostFlow answers the CamelCase calls (AddArcWithCapacityAndUnitCost, SetNodeSupply,
  Solve, NumArcs, Tail, Head, Flow, UnitCost, OPTIMAL) by the snake_case ones. It is installed
  before the devkit is imported, and only when the old module is really missing.
"""
from __future__ import annotations

import importlib
import re
import sys
import types
from typing import Any

from harness import MissingExtra

INSTALL_COMMAND = ('pip install -e ".[openlanev2]" "numpy<2" && '
                   "pip install --no-deps openlanev2==2.1.0")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def install_pywrapgraph_shim() -> bool:
    """Make `ortools.graph.pywrapgraph` importable on current ortools; True if the shim is used."""
    try:
        importlib.import_module("ortools.graph.pywrapgraph")
        return False  # an old ortools that still has it
    except ImportError:
        pass
    try:
        from ortools.graph.python import min_cost_flow
    except ImportError as exc:
        raise MissingExtra(f"openlanev2 needs ortools with ortools.graph.python.min_cost_flow "
                           f"({exc}); install with: {INSTALL_COMMAND}") from None

    class SimpleMinCostFlow(min_cost_flow.SimpleMinCostFlow):
        """The pre-9.4 CamelCase API over the current snake_case solver."""

        def __getattr__(self, name: str) -> Any:
            # Only called for names the class lacks, i.e. the old CamelCase ones.
            if name[:1].isupper():
                return getattr(self, _snake(name))
            raise AttributeError(name)

    if not hasattr(SimpleMinCostFlow, "OPTIMAL"):  # status codes lived on the solver class
        for status in min_cost_flow.SimpleMinCostFlow.Status:
            setattr(SimpleMinCostFlow, status.name, status)
    shim = types.ModuleType("ortools.graph.pywrapgraph")
    shim.__doc__ = "perception-harness shim: ortools.graph.python.min_cost_flow, CamelCase API"
    shim.SimpleMinCostFlow = SimpleMinCostFlow  # type: ignore[attr-defined]
    sys.modules["ortools.graph.pywrapgraph"] = shim
    import ortools.graph

    ortools.graph.pywrapgraph = shim  # type: ignore[attr-defined]
    return True


def centerline_devkit() -> Any:
    """`openlanev2.centerline` with `evaluation` and `preprocessing` loaded, or one clear line."""
    try:
        importlib.import_module("openlanev2")
    except ImportError:
        raise MissingExtra(f"workload openlanev2 needs the OpenLane-V2 devkit (openlanev2): "
                           f"{INSTALL_COMMAND}") from None
    install_pywrapgraph_shim()
    try:
        evaluation = importlib.import_module("openlanev2.centerline.evaluation")
        preprocessing = importlib.import_module("openlanev2.centerline.preprocessing")
    except ImportError as exc:
        raise MissingExtra(f"the OpenLane-V2 devkit is installed but cannot be imported ({exc}); "
                           f"its runtime dependencies come with: {INSTALL_COMMAND}") from None
    return types.SimpleNamespace(evaluate=evaluation.evaluate, collect=preprocessing.collect,
                                 check_results=preprocessing.check_results)
