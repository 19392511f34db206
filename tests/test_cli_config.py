"""`harness run` and `harness eval` options are generated from RunConfig / EvalConfig: every
field has its flag and help, every flag name and default users know is kept, and a new
field is a new flag whose value reaches the config with no other code."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import harness.config
import harness.runner
from harness.cli import build_parser, main
from harness.config import RunConfig
from harness.config_flags import add_config_arguments, config_values, option


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    sub = build_parser([verb])._subparsers._group_actions[0]  # type: ignore[union-attr]
    return sub.choices[verb]  # type: ignore[no-any-return]


def _config(argv: list[str]) -> RunConfig:
    args = build_parser(["check"]).parse_args(["run", *argv])
    return RunConfig(**config_values(RunConfig, args))


def test_run_help_shows_every_runconfig_field_with_its_help() -> None:
    parser = _verb_parser("run")
    text = parser.format_help()
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(RunConfig):
        if f.name == "plugin_options":  # filled from the plugins' own options
            assert f.metadata["cli"] is False
            continue
        assert f.name in actions, f"RunConfig.{f.name} has no `harness run` option"
        action = actions[f.name]
        assert action.help and action.help == f.metadata["help"] or f.name == "mode", f.name
        shown = action.option_strings[0] if action.option_strings else f.name
        assert shown in text, shown


# Every `harness run` flag before the options were generated, with a value and the field
# it sets: names, short forms and meanings users and scripts rely on.
KNOWN_FLAGS: list[tuple[list[str], dict[str, Any]]] = [
    (["--backend", "npu"], {"backend": "npu"}),
    (["--lazy"], {"mode": "lazy"}), (["--eager"], {"mode": "eager"}),
    (["--compile"], {"mode": "compile"}),
    (["--precision", "bf16"], {"precision": "bf16"}),
    (["--scale", "full"], {"scale": "full"}),
    (["--data", "/d"], {"data": Path("/d")}),
    (["--steps", "7"], {"steps": 7}), (["--epochs", "1.5"], {"epochs": 1.5}),
    (["--batch-size", "3"], {"batch_size": 3}),
    (["--eval-batch-size", "5"], {"eval_batch_size": 5}),
    (["--grad-accum", "2"], {"grad_accum": 2}),
    (["--log-interval", "4"], {"log_interval": 4}),
    (["--eval-interval", "6"], {"eval_interval": 6}),
    (["--warmup-steps", "1"], {"warmup_steps": 1}),
    (["--workers", "2"], {"num_workers": 2}),
    (["--seed", "9"], {"seed": 9}),
    (["--deterministic"], {"deterministic": True}),
    (["--set", "a=1", "--set", "b.c=2"], {"overrides": ("a=1", "b.c=2")}),
    (["--out", "o"], {"out": Path("o")}),
    (["--cache-dir", "c"], {"cache_dir": Path("c")}),
    (["--emulate"], {"emulate": True}),
    (["--deepspeed"], {"deepspeed": ""}), (["--deepspeed", "ds.json"], {"deepspeed": "ds.json"}),
    (["--no-eval"], {"eval": False}), (["--no-checkpoint"], {"checkpoint": False}),
    (["--checkpoint-interval", "50"], {"checkpoint_interval": 50}),
    (["--keep-checkpoints", "3"], {"keep_checkpoints": 3}),
]


@pytest.mark.parametrize(("flags", "expected"), KNOWN_FLAGS, ids=lambda x: " ".join(x)
                         if isinstance(x, list) else "")
def test_every_known_flag_sets_its_field(flags: list[str], expected: dict[str, Any]) -> None:
    assert _config(["w", *flags]) == dataclasses.replace(RunConfig(workload="w"), **expected)


def test_defaults_are_runconfig_defaults_and_the_record_keeps_its_shape() -> None:
    parsed = _config(["w"])
    assert parsed == RunConfig(workload="w")
    assert list(parsed.to_dict()) == [f.name for f in dataclasses.fields(RunConfig)]
    assert parsed.to_dict()["overrides"] == [] and parsed.to_dict()["mode"] == ""
    other = build_parser(["run"]).parse_args(["run", "w"])  # with the plugins' options too
    assert {"nproc", "overwrite", "resume", "profile"} <= set(vars(other))
    with pytest.raises(Exception, match="not allowed with argument"):
        build_parser(["check"]).parse_args(["run", "w", "--steps", "1", "--epochs", "1"])
    with pytest.raises(Exception, match="invalid choice"):
        build_parser(["check"]).parse_args(["run", "w", "--precision", "fp8"])


@dataclasses.dataclass(frozen=True)
class _ExtendedRunConfig(RunConfig):
    """RunConfig as a contributor would extend it: one new field, nothing else."""

    ema_decay: float | None = option(None, "keep an EMA of the weights with this decay")
    fused_optimizer: bool = option(False, "use the backend's fused optimizer")


def test_a_new_field_is_a_new_flag_whose_value_reaches_the_config(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Any] = []

    def execute(config: Any, overwrite: bool = False, **_: Any) -> Any:
        seen.append(config)
        return SimpleNamespace(status="ok")  # what the CLI reads of the record

    monkeypatch.setattr(harness.config, "RunConfig", _ExtendedRunConfig)
    monkeypatch.setattr(harness.runner, "execute", execute)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = capsys.readouterr().out
    assert "--ema-decay EMA_DECAY" in help_text and "--fused-optimizer" in help_text
    assert "keep an EMA of the weights with this decay" in help_text
    assert main(["run", "tiny", "--ema-decay", "0.999", "--fused-optimizer", "--steps", "2"]) == 0
    assert isinstance(seen[0], _ExtendedRunConfig)
    assert (seen[0].ema_decay, seen[0].fused_optimizer, seen[0].steps) == (0.999, True, 2)
    assert seen[0].to_dict()["ema_decay"] == 0.999  # and it is recorded


def test_a_field_that_cannot_be_a_flag_is_refused_when_the_flags_are_built() -> None:
    @dataclasses.dataclass
    class Bad:
        table: dict[str, int] = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="field table: type .* cannot be a command-line option"):
        add_config_arguments(argparse.ArgumentParser(), Bad)
    with pytest.raises(TypeError, match="unknown keys"):
        option(1, "x", flags="--typo")


def test_eval_options_are_every_evalconfig_field() -> None:
    from harness.config import EvalConfig

    parser = _verb_parser("eval")
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(EvalConfig):
        assert f.name in actions, f"EvalConfig.{f.name} has no `harness eval` option"
        assert f.metadata.get("help"), f"EvalConfig.{f.name}: no help"
    args = parser.parse_args(["yolov3", "--checkpoint", "c.pt", "--workers", "1", "--set", "a=1",
                              "--onnx", "m.onnx", "--eager", "--profile"])
    cfg = EvalConfig(**config_values(EvalConfig, args))
    assert cfg == EvalConfig(workload="yolov3", checkpoint=Path("c.pt"), num_workers=1,
                             overrides=("a=1",), onnx=Path("m.onnx"), mode="eager", profile=True)
    with pytest.raises(Exception, match="--checkpoint"):
        parser.parse_args(["yolov3"])  # EvalConfig.checkpoint has no default: required

