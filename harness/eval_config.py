"""What `harness eval` / `harness export` evaluate: EvalConfig, and the workload that a
checkpoint's weights belong to.

The workload config is built as for a run (preset, --batch-size, --set, then what datasets()
takes from the data) and must agree with the checkpoint's on every field except the run-only
ones and those the user set on purpose; otherwise the metrics would describe another model.
Without --scale, the preset closest to the checkpoint's config is taken.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from harness import plugins
from harness.api import Workload
from harness.config import WORKLOAD_RUN_FIELDS, EvalConfig, apply_overrides, config_to_dict
from harness.errors import UsageError
from harness.cache_dir import check_cache_dir
from harness.prepare import check_requirements, instantiate_workload
from harness.safe_load import Checkpoint, load_checkpoint


def _build_config(workload_cls: type[Workload], scale: str, cfg: EvalConfig) -> Any:
    presets = workload_cls.presets()
    if scale not in presets:
        raise UsageError(f"workload {workload_cls.name} has no scale '{scale}' "
                         f"(valid: {', '.join(presets)})")
    wcfg = presets[scale]
    fields = {f.name for f in dataclasses.fields(wcfg)}
    direct = {"eval_batch_size": cfg.batch_size, "num_workers": cfg.num_workers}
    wcfg = dataclasses.replace(wcfg, **{k: v for k, v in direct.items()
                                        if v is not None and k in fields})
    return apply_overrides(wcfg, cfg.overrides)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_mismatches(current: dict[str, Any], saved: dict[str, Any],
                      ignore: frozenset[str]) -> list[str]:
    """'key: checkpoint X, here Y' for each compared field that differs. Fields the checkpoint
    lacks (added to the workload after it was written) cannot be compared and are skipped."""
    out = []
    for key in sorted(set(saved) - ignore):
        mine = _plain(current[key]) if key in current else "<no such field>"
        if _plain(saved[key]) != mine:
            out.append(f"{key}: checkpoint {saved[key]!r}, here {mine!r}")
    return out


# Fields that shape how a model was trained, not the model evaluated: where its weights
# started and whether an average of them was kept.
TRAINING_ONLY_FIELDS = ("backbone_weights", "init_checkpoint", "ema_decay")


def _ignored(cfg: EvalConfig) -> frozenset[str]:
    return frozenset(WORKLOAD_RUN_FIELDS) | frozenset(TRAINING_ONLY_FIELDS) | cfg.user_set()


def choose_scale(workload_cls: type[Workload], cfg: EvalConfig, ckpt: Checkpoint) -> str:
    """--scale if given; else the preset whose config is closest to the checkpoint's."""
    presets = list(workload_cls.presets())
    if cfg.scale is not None or ckpt.workload_config is None:
        return cfg.scale or presets[0]
    counts = {s: len(config_mismatches(config_to_dict(_build_config(workload_cls, s, cfg)),
                                       ckpt.workload_config, _ignored(cfg))) for s in presets}
    return min(presets, key=lambda s: counts[s])  # ties: the first (smoke) preset


def build_workload(cfg: EvalConfig) -> tuple[Workload, Checkpoint, str]:
    """The checkpoint (safely loaded) and the workload its weights should belong to (no data
    yet); a checkpoint of another workload is a usage error."""
    workload_cls = plugins.get_workload(cfg.workload)
    check_requirements(workload_cls)
    ckpt = load_checkpoint(cfg.checkpoint)
    if ckpt.workload is not None and ckpt.workload != cfg.workload:
        raise UsageError(f"{cfg.checkpoint} holds a '{ckpt.workload}' model, not "
                         f"'{cfg.workload}' (mismatching key: workload)")
    scale = choose_scale(workload_cls, cfg, ckpt)
    workload = instantiate_workload(workload_cls, _build_config(workload_cls, scale, cfg),
                                    cfg.user_set())
    return workload, ckpt, scale


def check_checkpoint_config(cfg: EvalConfig, workload: Workload, ckpt: Checkpoint,
                            scale: str) -> None:
    """After datasets() (which may take fields from the data): the config must be the
    checkpoint's, except run-only fields and those set on purpose; else name the keys."""
    if ckpt.workload_config is None:
        return
    bad = config_mismatches(config_to_dict(workload.config), ckpt.workload_config, _ignored(cfg))
    if bad:
        raise UsageError(f"{cfg.checkpoint} was trained with another {cfg.workload} config "
                         f"than scale '{scale}' gives here; mismatching keys: "
                         + "; ".join(bad) + " (pick --scale, or --set KEY=VALUE)")


def prepare_workload(cfg: EvalConfig) -> tuple[Workload, Checkpoint, Any, str]:
    """build_workload, its data, and the config check (for `harness export`)."""
    workload, ckpt, scale = build_workload(cfg)
    data = workload.datasets(cfg.data, check_cache_dir(cfg.cache_dir, needed=cfg.data is None))
    check_checkpoint_config(cfg, workload, ckpt, scale)
    return workload, ckpt, data, scale


def load_checkpoint_into(model: Any, workload: Workload, ckpt: Checkpoint, cfg: EvalConfig,
                         scale: str) -> str:
    """The checkpoint's weights into the built model, strictly, in this project's names or
    a layout the workload declares (an original's release); returns the names' layout."""
    from harness.start_weights import load_model_weights

    hint = ("" if cfg.scale is not None or ckpt.workload_config is not None else
            f" (the '{scale}' preset was built; a released checkpoint needs --scale full)")
    return load_model_weights(model, ckpt.state_dict, Path(cfg.checkpoint),
                              workload.weight_layouts("model"), hint)

