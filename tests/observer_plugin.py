"""Test-only observer: adds `--tag` to `harness run` and logs every lifecycle hook."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import hookimpl

EVENTS: list[tuple[str, Any]] = []


@hookimpl
def harness_addoption(parser: Any) -> None:
    parser.add_argument("--tag", default="none", help="a label for the observer (tests)")


@hookimpl
def harness_configure(config: Any) -> None:
    EVENTS.append(("configure", config.option("tag")))


@hookimpl
def harness_run_start(run: Any) -> None:
    EVENTS.append(("run_start", run.total_steps))


@hookimpl
def harness_step_end(run: Any, step: int) -> None:
    EVENTS.append(("step_end", step))


@hookimpl
def harness_eval_end(run: Any, metrics: dict[str, float]) -> None:
    EVENTS.append(("eval_end", sorted(metrics)))


@hookimpl
def harness_run_end(run: Any, record: dict[str, Any]) -> None:
    EVENTS.append(("run_end", record["status"]))
    Path(run.out_dir / "observer.json").write_text(json.dumps(EVENTS))
