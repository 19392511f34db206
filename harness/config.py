"""RunConfig and EvalConfig (frozen; their fields declare the command-line options, see
harness/config_flags.py), `--set key=value` overrides typed by the target field, and the
generic range checks of workload configs.

Overrides work like the seeds' `--cfg-options`: dotted keys reach nested dataclasses,
values are parsed by the field's annotated type, an unknown key lists the valid ones.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.config_flags import option, strip_optional
from harness.errors import ConfigError, UsageError
from harness.workload_config import WorkloadConfig

# The workload Config fields the host reads (declared with defaults on WorkloadConfig).
WORKLOAD_RUN_FIELDS = ("batch_size", "eval_batch_size", "steps", "grad_clip", "num_workers")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One `harness run`: each field is a `harness run` option (harness/config.py builds
    the flags from these declarations: a new field is a new flag). Names and values are
    stored in record.json ("config.run") and read back by `--resume`."""

    workload: str = option(help="workload name (listed below; not with --resume)",
                           positional=True, nargs="?")
    backend: str = option("cpu", "backend name (listed below; default cpu)")
    mode: str = option("", "execution mode (validated against the backend)",
                       switches=("lazy", "eager", "compile"))  # "": the backend's default
    precision: str = option("fp32", "training precision (autocast dtype; default fp32)",
                            choices=("fp32", "bf16", "fp16"))
    scale: str = option("smoke", "preset: smoke (default) or full")
    data: Path | None = option(None, "dataset root in the workload's real format (default: "
                                     "synthetic data in that format, written to the cache)")
    steps: int | None = option(None, "optimizer steps (default: the preset's)",
                               exclusive="length")
    epochs: float | None = option(None, "passes over the train split instead of --steps",
                                  exclusive="length")
    batch_size: int | None = option(None, "per-process batch (default: the preset's)")
    eval_batch_size: int | None = option(None, "evaluation batch (default: the preset's)")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    log_interval: int = option(10, "console/log.jsonl every N steps")
    eval_interval: int = option(0, "also evaluate every N steps")  # 0: once, at the end
    warmup_steps: int | None = option(None, "untimed steps before the timed window (default: "
                                            "min(10, steps // 5))")
    seed: int = option(0, "seed of the model, data order and augmentation (default 0)")
    deterministic: bool = option(False, "deterministic algorithms (slower; for bit-exact "
                                        "comparisons)")
    overrides: tuple[str, ...] = option((), "override a workload config field, typed by the "
                                            "field (repeatable)", flag="--set",
                                        metavar="KEY=VALUE")
    out: Path | None = option(None, "run folder (default runs/<workload>-<backend>-...)")
    cache_dir: Path | None = option(None, "where synthetic data, and the derived files (infos) "
                                          "of a read-only --data root, are written")
    num_workers: int | None = option(None, "DataLoader workers", flag="--workers")
    emulate: bool = option(False, "run on a CPU-emulated device (portability dry run; speed "
                                  "not meaningful)")
    deepspeed: str | None = option(None, "train through DeepSpeed (config built from the "
                                         "options if none given)",
                                   nargs="?", const="", metavar="CONFIG.json")
    eval: bool = option(True, "skip the final evaluation (no accuracy metrics in the record)")
    checkpoint: bool = option(True, "do not write checkpoint.pt")
    # Periodic checkpoints (harness/checkpoint.py).
    checkpoint_interval: int | None = option(
        None, "also write checkpoints/step_<N>.pt every N steps, to resume from (default: off "
              "for smoke, every 1000 steps otherwise; 0: off)", metavar="N")
    keep_checkpoints: int = option(2, "periodic checkpoints kept (newest K; default 2)",
                                   metavar="K")
    # (dest, value) pairs of options that plugins added through harness_addoption.
    plugin_options: tuple[tuple[str, Any], ...] = option((), cli=False)

    def option(self, name: str, default: Any = None) -> Any:
        """The value of a plugin-added option."""
        return dict(self.plugin_options).get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the record; a password in a URL option (an MLflow server's
        `https://user:secret@host`) is masked: records are shared."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        out["plugin_options"] = [[k, mask_password(v)] for k, v in out["plugin_options"]]
        return out


MASK = "***"


def mask_password(value: Any) -> Any:
    """`scheme://user:secret@host/...` -> `scheme://user:***@host/...`; other values as
    they are."""
    if not isinstance(value, str) or "://" not in value:
        return value
    scheme, _, rest = value.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc:
        return value
    creds, _, host = netloc.rpartition("@")
    if ":" not in creds:
        return value
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}{slash}{path}"


def is_masked(value: Any) -> bool:
    return isinstance(value, str) and mask_password(value) == value and f":{MASK}@" in value


_ONNX = "inference-only backends (onnxruntime)"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One `harness eval` (and, for the fields that say which model and data, `harness
    export`): each field is an option, as RunConfig's are; stored in the eval record
    ("config.run")."""

    workload: str = option(help="workload name", positional=True)
    checkpoint: Path = option(
        help="a run's checkpoint.pt, or a bare state dict (loaded weights_only)")
    backend: str = option("cpu", "backend name (default cpu)")
    mode: str = option("", "execution mode (validated against the backend)",
                       switches=("lazy", "eager", "compile"))
    precision: str = option("fp32", "inference precision (default fp32)",
                            choices=("fp32", "bf16", "fp16"))
    scale: str | None = option(None, "preset (default: the one the checkpoint's config matches)")
    data: Path | None = option(None, "dataset root (default: the synthetic data)")
    batch_size: int | None = option(None, "eval batch size (default: the preset's "
                                          "eval_batch_size)")
    warmup_batches: int | None = option(None, "untimed batches first (default 2, at most "
                                              "batches - 1)")
    seed: int = option(0, "seed (default 0)")
    overrides: tuple[str, ...] = option(
        (), "override a workload config field (not compared with the checkpoint)",
        flag="--set", metavar="KEY=VALUE")
    out: Path | None = option(None, "eval folder (default runs/eval-<workload>-...)")
    cache_dir: Path | None = option(None, "where synthetic data is written")
    num_workers: int | None = option(None, "DataLoader workers", flag="--workers")
    emulate: bool = option(False, "run on a CPU-emulated device (portability dry run)")
    onnx: Path | None = option(None, "run this exported graph (default: export one from the "
                                     "checkpoint into the eval folder)", group=_ONNX)
    opset: int | None = option(None, "ONNX opset when exporting (default 17)", group=_ONNX)
    agreement_batches: int = option(0, "batches compared with the PyTorch model output by "
                                       "output (0 = all)", group=_ONNX)
    profile: bool = option(False, "torch.profiler trace of the first timed batches (<out>/"
                                  "profile_trace.json) and a per-component time table in the "
                                  "record")
    profile_steps: int = option(3, "batches to profile")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in out.items()}

    def user_set(self) -> frozenset[str]:
        """Workload config fields set on purpose: never compared with the checkpoint's."""
        keys = {o.split("=", 1)[0].strip().split(".")[0] for o in self.overrides}
        if self.batch_size is not None:
            keys.add("eval_batch_size")
        if self.num_workers is not None:
            keys.add("num_workers")
        return frozenset(keys)


def parse_value(text: str, tp: Any, key: str) -> Any:
    """Parse `text` as a value of annotated type `tp`; raise UsageError naming `key`."""
    tp, optional = strip_optional(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {text!r}")
        if tp in (int, float, str):
            return tp(text)
        if tp is Path:
            return Path(text)
        if origin is tuple:
            args = typing.get_args(tp)
            items = [t for t in text.strip("()[] ").split(",") if t.strip()]
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(parse_value(t.strip(), args[0], key) for t in items)
            if len(args) != len(items):
                raise ValueError(f"expected {len(args)} comma-separated values")
            return tuple(parse_value(t.strip(), a, key) for t, a in zip(items, args))
        if typing.get_origin(tp) is typing.Literal:
            choices = typing.get_args(tp)
            if text not in choices:
                raise ValueError(f"expected one of {', '.join(map(str, choices))}")
            return text
    except ValueError as exc:
        raise UsageError(f"--set {key}={text}: {exc}") from None
    raise UsageError(f"--set {key}: fields of type {tp} cannot be set from the command line")


def apply_overrides(obj: Any, overrides: Sequence[str]) -> Any:
    """Return a copy of dataclass `obj` with each "a.b=value" override applied."""
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        obj = _set_path(obj, key.strip().split("."), text.strip(), key.strip())
    return obj


def _set_path(obj: Any, path: list[str], text: str, full_key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    passthrough = obj.passthrough_field if isinstance(obj, WorkloadConfig) else ""
    if name not in fields and passthrough in fields:
        # A config that takes foreign keys as strings (an OpenMMLab config's cfg-options).
        return dataclasses.replace(obj, **{passthrough: (*vars(obj)[passthrough],
                                                         f"{full_key}={text}")})
    if name not in fields:
        raise UsageError(
            f"--set {full_key}: unknown key '{name}' for {type(obj).__name__} "
            f"(valid: {', '.join(sorted(fields))})"
        )
    current = getattr(obj, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise UsageError(f"--set {full_key}: '{name}' has no sub-keys")
        return dataclasses.replace(obj, **{name: _set_path(current, path[1:], text, full_key)})
    hints = typing.get_type_hints(type(obj))
    return replace_checked(obj, **{name: parse_value(text, hints[name], full_key)})


def replace_checked(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace, with a config's own __post_init__ check (a ValueError) answered
    as the ConfigError it is, not as an internal error."""
    try:
        return dataclasses.replace(obj, **changes)
    except (ValueError, TypeError) as exc:
        field = next(iter(changes), "?")
        raise ConfigError.bad_value(field, changes.get(field), str(exc)) from exc


def config_to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (possibly nested) config dataclass."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


# Workload-config fields that RunConfig can set directly (--batch-size, --eval-batch-size, --workers).
DIRECT_FIELDS = ("batch_size", "eval_batch_size", "num_workers")


def user_set_fields(run: RunConfig) -> frozenset[str]:
    """The workload-config fields this run sets explicitly: the first component of each
    `--set` key, plus the direct options that were given."""
    keys = {item.split("=", 1)[0].strip().split(".")[0] for item in run.overrides if "=" in item}
    keys.update(name for name in DIRECT_FIELDS if getattr(run, name) is not None)
    return frozenset(keys)


# What a field's name says about its range (the generic check; a workload config's
# validate() adds the model's own rules). Matched on the last dotted component.
_POSITIVE_NAMES = frozenset({"batch_size", "eval_batch_size", "steps", "num_classes",
                             "num_heads", "num_query", "num_keys", "num_cams", "num_cameras",
                             "num_control_points", "num_lane_points", "num_height_planes",
                             "memory_len", "topk_proposals"})
# Sizes of a network or a data item: a width, a head count, a layer count, a scale.
_POSITIVE_SUFFIXES = ("_size", "_wh", "_divisor", "_stride", "_channels", "_dims", "_heads",
                      "_layers", "_queries", "_scale")
_POSITIVE_PREFIXES = ("max_",)  # caps (max_objs, max_lanes, max_per_img)
_NON_NEGATIVE_NAMES = frozenset({"lr", "lr_per_sample", "num_workers", "grad_clip"})
_NON_NEGATIVE_PARTS = ("weight", "warmup", "seed", "synth")
_NON_NEGATIVE_PREFIXES = ("num_",)  # counts that may be 0 (num_propagated, num_workers)
_NON_NEGATIVE_SUFFIXES = ("_thr", "_groups")  # thresholds and group counts (dn_groups)
_UNIT_SUFFIXES = ("_prob", "_ratio")


def _numbers(value: Any) -> list[float] | None:
    """The numbers in a numeric field (a number or a tuple of them); None if not numeric."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                            for v in items):
        return None
    try:
        return [float(v) for v in items]
    except OverflowError:  # an int beyond any float (--set steps=999...9): not finite
        return [math.inf]


def _range_rule(name: str) -> tuple[str, Callable[[float], bool]] | None:
    if name.endswith(_UNIT_SUFFIXES) or name == "dropout":
        return "must be in [0, 1]", lambda v: 0 <= v <= 1
    if name.endswith("_decay") and name != "weight_decay":  # an average's decay (ema_decay)
        return "must be in [0, 1)", lambda v: 0 <= v < 1
    if (name in _POSITIVE_NAMES or name.endswith(_POSITIVE_SUFFIXES)
            or name.startswith(_POSITIVE_PREFIXES)):
        return "must be > 0", lambda v: v > 0
    if (name in _NON_NEGATIVE_NAMES or any(part in name for part in _NON_NEGATIVE_PARTS)
            or name.startswith(_NON_NEGATIVE_PREFIXES) or name.endswith(_NON_NEGATIVE_SUFFIXES)):
        return "must be >= 0", lambda v: v >= 0
    return None


@typing.runtime_checkable
class Validates(typing.Protocol):
    """A workload config with rules across its fields (WorkloadConfig.validate's contract)."""

    def validate(self) -> None: ...


def check_config_values(cfg: Any, prefix: str = "") -> None:
    """Every numeric field of (nested) config dataclass `cfg` finite, and in the range its
    name implies; then the config's own `validate()` if it has one. ConfigError (exit 2)
    naming the first bad field."""
    for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(cfg) else ():
        value = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_config_values(value, key + ".")
            continue
        numbers = _numbers(value)
        if numbers is None:
            continue
        if not all(math.isfinite(v) for v in numbers):
            raise ConfigError.bad_value(key, value, "must be finite")
        rule = _range_rule(f.name)
        if rule is not None and not all(rule[1](v) for v in numbers):
            raise ConfigError.bad_value(key, value, rule[0])
    if isinstance(cfg, Validates):  # WorkloadConfig, or a plugin config declaring validate()
        cfg.validate()


def require(ok: bool, field: str, value: Any, rule: str, fix: str = "") -> None:
    """For a config's validate(): ConfigError naming `field` unless `ok`."""
    if not ok:
        raise ConfigError.bad_value(field, value, rule, fix)
