"""harness/training.py's Trainer: the loop in small methods, no device sync per step."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.runner import execute


def _syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: int) -> int:
    from backends.cpu import CPUBackend

    calls: list[int] = []
    monkeypatch.setattr(CPUBackend, "synchronize", lambda self: calls.append(1))
    execute(RunConfig(workload="tiny", out=tmp_path / str(steps), checkpoint=False, eval=False,
                      steps=steps, warmup_steps=2, log_interval=10))
    return len(calls)


def test_the_device_is_synchronized_at_pauses_only(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Ten more steps add one log point (one synchronized pause), not a sync per step.
    assert _syncs(tmp_path, monkeypatch, 30) - _syncs(tmp_path, monkeypatch, 20) == 1


def test_train_steps_through_the_trainers_methods(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import training

    calls: list[str] = []
    for name in ("accumulate", "step", "log", "evaluate", "checkpoint"):
        original = getattr(training.Trainer, name)

        def spy(self: training.Trainer, *args: object, _name: str = name,
                _original: object = original) -> object:
            calls.append(_name)
            return _original(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(training.Trainer, name, spy)
    execute(RunConfig(workload="tiny", out=tmp_path / "r", checkpoint=False, eval=False,
                      steps=4, warmup_steps=1, log_interval=2, eval_interval=3,
                      checkpoint_interval=2))
    assert calls == ["step", "accumulate", "step", "accumulate", "log", "checkpoint",
                     "step", "accumulate", "evaluate", "step", "accumulate", "log"]
