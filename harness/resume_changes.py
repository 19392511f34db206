"""`harness run --resume DIR --set lr=...`: a run resumed with other optimizer or schedule
fields (issue 24 item 2: a `diverged` run continues from its last finite checkpoint at a
lower learning rate, the remedy the StreamPETR notes give for NaN grad norms).

Only fields that set the optimizer's hyperparameters or the learning-rate schedule may
change (`may_change_on_resume`, by name as harness/config.py's range rules): what the model
is, what data it reads and how long it trains stay the recorded run's. After the checkpoint
is loaded, the freshly built optimizer's hyperparameters and scheduler's settings replace
the checkpoint's (`Fresh.reapply`), while the optimizer's moments and the schedule's
position stay. The record lists each change at the step it took effect
(`resumed_from[i].changed`), and `check`/`parity` call such a run another recipe
(harness/comparable.py).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

# Optimizer hyperparameters and schedule settings, by field name.
_NAMES = frozenset({"lr", "weight_decay", "momentum", "grad_clip", "gamma", "milestones",
                    "schedule"})
_PREFIXES = ("lr_", "warmup_")  # lr_per_sample, lr_gamma, lr_milestones; warmup_iters/ratio
_SUFFIXES = ("_lr_mult", "_lr_ratio")  # backbone_lr_mult, min_lr_ratio
# A scheduler's position in its schedule (kept from the checkpoint); its other state_dict
# entries are settings built from the config (base_lrs, milestones, gamma).
_SCHEDULE_POSITION = frozenset({"last_epoch", "_step_count", "_last_lr",
                                "_get_lr_called_within_step", "_is_initial", "lr_lambdas"})


def may_change_on_resume(field: str) -> bool:
    """Whether a workload config field (its top-level name) may take another value when a
    run is resumed."""
    return (field in _NAMES or field.startswith(_PREFIXES) or field.endswith(_SUFFIXES))


def changed_fields(new: dict[str, Any], old: dict[str, Any]) -> dict[str, list[Any]]:
    """{field: [old, new]} for the optimizer/schedule fields whose values differ."""
    return {k: [old.get(k), new[k]] for k in sorted(new)
            if may_change_on_resume(k) and k in old and _plain(old[k]) != _plain(new[k])}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


class Fresh:
    """The optimizer's and scheduler's settings as built from the resumed run's config,
    taken before the checkpoint overwrites them."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        self.groups = [{k: v for k, v in g.items() if k != "params"}
                       for g in optimizer.param_groups]
        self.schedule = dict(scheduler.state_dict()) if scheduler is not None else None

    def reapply(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """After the checkpoint was loaded: these settings win; the optimizer's moments and
        step counts and the schedule's position stay the checkpoint's."""
        for group, fresh in zip(optimizer.param_groups, self.groups):
            group.update({k: v for k, v in fresh.items() if k not in ("lr", "initial_lr")})
        if scheduler is None or self.schedule is None:
            for group, fresh in zip(optimizer.param_groups, self.groups):
                group["lr"] = fresh["lr"]
            return
        loaded = scheduler.state_dict()
        old_base = list(loaded.get("base_lrs") or [g["lr"] for g in optimizer.param_groups])
        scheduler.load_state_dict({**loaded, **{k: v for k, v in self.schedule.items()
                                                if k not in _SCHEDULE_POSITION}})
        new_base = list(getattr(scheduler, "base_lrs", old_base))
        for group, base in zip(optimizer.param_groups, new_base):
            group["initial_lr"] = base
        lrs = _current_lrs(scheduler, optimizer, old_base, new_base)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = list(lrs)


def _current_lrs(scheduler: Any, optimizer: torch.optim.Optimizer, old_base: list[float],
                 new_base: list[float]) -> list[float]:
    """The learning rates at the schedule's position under the new settings: closed form
    where the scheduler has one (LambdaLR, MultiStepLR); else the checkpoint's rates scaled
    by new / old base rate (every torch schedule is proportional to its base rate)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return [base * fn(scheduler.last_epoch)
                for base, fn in zip(new_base, scheduler.lr_lambdas)]
    closed = getattr(scheduler, "_get_closed_form_lr", None)
    if callable(closed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [float(lr) for lr in closed()]
    return [g["lr"] * (new / old if old else 1.0)
            for g, old, new in zip(optimizer.param_groups, old_base, new_base)]
