"""Repo-level pytest glue only; the options and fixtures live in harness/pytest_plugin.py
(installed as a pytest11 entry point). Registering it here too keeps `pytest` working from
a checkout that has not been pip-installed."""
from __future__ import annotations

import importlib.metadata

_installed = any(ep.value == "harness.pytest_plugin"
                 for ep in importlib.metadata.entry_points(group="pytest11"))
pytest_plugins = [] if _installed else ["harness.pytest_plugin"]
