"""Activation of an OpenMMLab stack (what it needs is harness/sources.py's): the portable mmcv
ops installed where compiled mmcv is absent, mmengine's logger quieted, then the stack's
modules registered (mmengine's registries are filled by import side effects)."""
from __future__ import annotations

import importlib
import logging

from harness.errors import SourceUnavailable
from harness.sources import STACKS, install_line, missing


def activate(stack: str) -> None:
    """Make `stack` usable (idempotent): SourceUnavailable (exit 3) with the install line when a
    module is missing."""
    absent = missing(stack)
    if absent:
        raise SourceUnavailable(f"the {stack}: config source needs {', '.join(absent)}: "
                                f"{install_line(stack)}")
    from mmengine.logging import MMLogger

    from workloads.openmmlab.mmcv_ops_shim import install

    install()
    # mmengine logs every parameter's initialisation at INFO: the harness's console speaks
    # for the run; its warnings and errors still print.
    if not MMLogger.check_instance_created("mmengine"):
        MMLogger.get_instance("mmengine", log_level="WARNING")
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    importlib.import_module(STACKS[stack][1]).register_all_modules(init_default_scope=True)
