from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.config import apply_overrides, parse_value
from harness.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    milestones: tuple[int, ...] = (8, 11)


@dataclasses.dataclass(frozen=True)
class Outer:
    input_size: int = 416
    name: str = "a"
    clip: float | None = None
    flip: bool = False
    size: tuple[int, int] = (64, 176)
    root: Path | None = None
    optim: Inner = Inner()


def test_overrides_are_typed_by_field() -> None:
    cfg = apply_overrides(Outer(), ["input_size=320", "clip=35", "flip=true", "size=128,352",
                                    "optim.lr=2e-4", "optim.milestones=19,23", "root=/data"])
    assert cfg.input_size == 320 and isinstance(cfg.input_size, int)
    assert cfg.clip == 35.0 and cfg.flip is True and cfg.size == (128, 352)
    assert cfg.optim == Inner(lr=2e-4, milestones=(19, 23)) and cfg.root == Path("/data")
    assert apply_overrides(cfg, ["clip=none"]).clip is None


@pytest.mark.parametrize("item, message", [
    ("nosuch=1", "unknown key 'nosuch'"),
    ("input_size=big", "invalid literal"),
    ("flip=maybe", "not a boolean"),
    ("size=1,2,3", "expected 2"),
    ("optim.nosuch=1", "valid: lr, milestones"),
    ("input_size", "key=value"),
])
def test_bad_overrides_say_why(item: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        apply_overrides(Outer(), [item])


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(UsageError) as exc:
        apply_overrides(Outer(), ["inputsize=3"])
    assert "input_size" in str(exc.value) and "optim" in str(exc.value)


def test_parse_value_optional_int() -> None:
    assert parse_value("7", int | None, "k") == 7
    assert parse_value("None", int | None, "k") is None
