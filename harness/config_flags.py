"""Command-line options generated from config dataclass fields (RunConfig, EvalConfig).

Each field of a config is one option; its type, default and help come from the field, so a
new field is a new flag and its value reaches the config with no hand mapping. The field's
`metadata` (build it with `option(...)`) says what the type cannot: the help text, a flag
name other than `--field-name`, choices, a metavar, a group.

    steps: int | None = option(None, "optimizer steps (default: the preset's)", exclusive="length")

Types: bool (False: `--name` sets it; True: `--no-name` clears it), int, float, str, Path,
each optionally `| None`, Literal[...] (its values are the choices) and tuple[T, ...] (a
repeatable flag). The option's dest is always the field's name.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Union

# What a field's metadata may say (anything else is a typo, refused when the flags are built).
KEYS = frozenset({"help", "flag", "choices", "metavar", "positional", "nargs", "const",
                  "exclusive", "switches", "group", "cli"})
_SCALARS = (int, float, str, Path)


def option(default: Any = dataclasses.MISSING, help: str = "", **cli: Any) -> Any:
    """A dataclass field with its command-line documentation (see the module docstring)."""
    unknown = set(cli) - KEYS
    if unknown:
        raise TypeError(f"option(): unknown keys {sorted(unknown)} (valid: {sorted(KEYS)})")
    return dataclasses.field(default=default, metadata={"help": help, **cli})


def _spec(f: dataclasses.Field[Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    spec = {**extra, **f.metadata}  # the field's own documentation wins
    unknown = set(spec) - KEYS
    if unknown:
        raise TypeError(f"field {f.name}: unknown option keys {sorted(unknown)}")
    return spec


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _kwargs(f: dataclasses.Field[Any], tp: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    """argparse keyword arguments for field `f` of annotated type `tp`."""
    default = _default(f)
    kw: dict[str, Any] = {"dest": f.name, "help": spec.get("help", "")}
    base = strip_optional(tp)[0]
    if base is bool:
        action = "store_false" if default else "store_true"
        return {**kw, "action": action, "default": bool(default)}
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        if len(args) != 2 or args[1] is not Ellipsis or args[0] not in _SCALARS:
            raise TypeError(f"field {f.name}: only tuple[T, ...] of {_SCALARS} can be a flag")
        kw.update(action="append", type=args[0], default=list(default or ()))
    else:
        if typing.get_origin(base) is typing.Literal:
            kw["choices"] = typing.get_args(base)
            base = type(kw["choices"][0])
        if base not in _SCALARS:
            raise TypeError(f"field {f.name}: type {tp} cannot be a command-line option; give "
                            f"it metadata cli=False or use one of {_SCALARS}")
        kw.update(type=base, default=default)
    for key in ("choices", "metavar", "nargs", "const"):
        if key in spec:
            kw[key] = spec[key]
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        kw["required"] = True
    return kw


def flag_names(f: dataclasses.Field[Any], spec: Mapping[str, Any]) -> list[str]:
    """The option strings of field `f` (a positional: its name)."""
    if spec.get("positional"):
        return [f.name]
    given = spec.get("flag")
    if given:
        return [given] if isinstance(given, str) else list(given)
    default = _default(f)
    prefix = "--no-" if default is True else "--"
    return [prefix + f.name.replace("_", "-")]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[Any],
                         docs: Mapping[str, Mapping[str, Any]] | None = None,
                         only: tuple[str, ...] | None = None) -> list[str]:
    """Add one option per field of dataclass `cls` (fields with cli=False are skipped; `only`:
    these fields alone). `docs`: field name -> metadata, for a config whose fields do not carry
    their own (the field's metadata wins). Returns the dests added, in field order."""
    hints = typing.get_type_hints(cls)
    groups: dict[Any, Any] = {}  # argument groups by title; exclusive groups by ("exclusive", name)
    added: list[str] = []
    for f in dataclasses.fields(cls):
        spec = _spec(f, (docs or {}).get(f.name, {}))
        if spec.get("cli", True) is False or (only is not None and f.name not in only):
            continue
        target: Any = parser
        if "group" in spec:
            if spec["group"] not in groups:
                groups[spec["group"]] = parser.add_argument_group(spec["group"])
            target = groups[spec["group"]]
        if "exclusive" in spec or "switches" in spec:
            key = ("exclusive", spec.get("exclusive", f.name))
            if key not in groups:
                groups[key] = target.add_mutually_exclusive_group()
            target = groups[key]
        if "switches" in spec:  # one flag per value: --lazy / --eager / --compile
            for value in spec["switches"]:
                target.add_argument(f"--{value}", dest=f.name, action="store_const", const=value,
                                    default=_default(f), help=f"{value} {spec.get('help', '')}")
        elif spec.get("positional"):
            kw = _kwargs(f, hints[f.name], spec)
            kw.pop("dest")
            kw.pop("required", None)
            kw.setdefault("nargs", None if f.default is dataclasses.MISSING else "?")
            target.add_argument(f.name, **kw)
        else:
            target.add_argument(*flag_names(f, spec), **_kwargs(f, hints[f.name], spec))
        added.append(f.name)
    return added


def config_values(cls: type[Any], args: argparse.Namespace) -> dict[str, Any]:
    """The config fields found in `args` (parsed by add_config_arguments), typed for `cls`:
    a repeatable flag's list becomes the field's tuple."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) is not False and hasattr(args, f.name):
            value = getattr(args, f.name)
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False
