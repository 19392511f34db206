"""One path to a prepared run: workload config, backend, strategy, device, seed, data, loaders.

`harness run` (runner.py), `harness eval`, the pytest-benchmark step (benchmark.py) and the
numerics check (numerics.py) all prepare through here, so none of them can skip a step
(precision checks, seeding, the workload's own sampler) the others take.

Two stages, because a run writes its record in between:

    prepared = resolve_run(config)     # usage errors only; no device touched, nothing loaded
    setup_run(prepared)                # strategy + device + precision check + seed + data
    loader = prepared.loader("train")  # or "val"
    ...
    prepared.close()

`prepare_run(config)` does both stages (and closes what it opened if the second fails). An
eval-only caller passes its own workload (`workload=`, e.g. with a checkpoint's config) and
needs no optimizer: nothing here builds a model.
"""
from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import importlib.util
import inspect
import os
import random
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from harness import plugins
from harness.api import Backend, Datasets, Workload
from harness.config import (
    DIRECT_FIELDS,
    RunConfig,
    apply_overrides,
    check_config_values,
    replace_checked,
    user_set_fields,
)
from harness.errors import (
    BackendUnavailable,
    ConfigError,
    DatasetError,
    MissingExtra,
    UsageError,
)
from harness.cache_dir import cache_root, check_cache_dir, default_cache
from harness.strategies import DDPStrategy, Strategy

DEFAULT_CACHE = default_cache()  # as at import; jobs ask cache_root() (reads $HARNESS_CACHE then)


def check_requirements(workload_cls: type[Workload]) -> None:
    missing = [m for m in workload_cls.requires if importlib.util.find_spec(m) is None]
    if missing:
        extra = workload_cls.extra or workload_cls.name
        raise MissingExtra(f"workload {workload_cls.name} needs {', '.join(missing)}: "
                           f"pip install 'perception-harness[{extra}]'")


def resolve_workload_config(workload_cls: type[Workload], run: RunConfig) -> Any:
    """The preset of `run.scale` with the direct options and `--set` overrides applied."""
    presets = workload_cls.presets()
    if run.scale not in presets:
        raise UsageError(f"workload {workload_cls.name} has no scale '{run.scale}' "
                         f"(valid: {', '.join(presets)})")
    cfg = presets[run.scale]
    direct = {name: getattr(run, name) for name in DIRECT_FIELDS}
    fields = {f.name for f in dataclasses.fields(cfg)}
    with _naming_the_workload(workload_cls.name):
        cfg = replace_checked(cfg, **{k: v for k, v in direct.items()
                                      if v is not None and k in fields})
        return apply_overrides(cfg, run.overrides)


@contextlib.contextmanager
def _naming_the_workload(name: str) -> Iterator[None]:
    """A ConfigError's line starts with the workload it is about."""
    try:
        yield
    except ConfigError as exc:
        if str(exc).startswith("config "):
            error = ConfigError(f"workload {name} {exc}")
            error.field = exc.field
            raise error from exc
        raise


def instantiate_workload(workload_cls: type[Workload], workload_cfg: Any,
                         user_set: frozenset[str]) -> Workload:
    """The workload with the fields the user set; tolerates plugins whose __init__ predates
    the `user_set` argument (they get the attribute set afterwards)."""
    with _naming_the_workload(workload_cls.name):  # before any data is touched
        check_config_values(workload_cfg)
    params = inspect.signature(workload_cls.__init__).parameters
    if "user_set" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return workload_cls(workload_cfg, user_set=user_set)  # type: ignore[call-arg]
    workload = workload_cls(workload_cfg)
    workload.user_set = frozenset(user_set)
    return workload


def resolve_workload(config: RunConfig) -> Workload:
    workload_cls = plugins.get_workload(config.workload)
    check_requirements(workload_cls)
    return instantiate_workload(workload_cls, resolve_workload_config(workload_cls, config),
                                user_set_fields(config))


def prepare_backend(run: RunConfig) -> Backend:
    """Emulate (if asked), validate, set the vendor environment, probe, instantiate."""
    backend_cls = plugins.get_backend(run.backend)
    if run.emulate:
        backend_cls.emulate()
    mode = run.mode or backend_cls.capabilities.default_mode
    backend_cls.validate(mode, run.precision)
    os.environ.update(backend_cls.environment(mode))
    probe = backend_cls.probe()
    if not probe.available:
        hint = ("; for a portability dry run without the hardware add --emulate"
                if plugins.can_emulate(backend_cls) else "")
        raise BackendUnavailable(f"backend {run.backend} is unavailable: {probe.reason}{hint}")
    return backend_cls(mode=mode, emulated=run.emulate)


def choose_strategy(run: RunConfig) -> Strategy:
    """DeepSpeed where asked, DDP under a launcher (WORLD_SIZE > 1), else one process. Here,
    not in strategies.py: the DeepSpeed strategy derives from the base class there."""
    if run.deepspeed is not None:
        from harness.deepspeed_strategy import DeepSpeedStrategy

        return DeepSpeedStrategy(run.deepspeed)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return DDPStrategy()
    return Strategy()


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(workload: Workload, dataset: Any, collate: Any, *, train: bool, seed: int,
                world_size: int = 1, rank: int = 0, pin_memory_device: str = "") -> DataLoader:
    """The training loader (shuffled, the workload's batch sampler if it has one, sharded
    under DDP) or the evaluation loader (in order, every sample). `pin_memory_device`: the
    device type to pin host batches for ("" = no pinning)."""
    wcfg = workload.config
    batch = (wcfg.batch_size if train else wcfg.eval_batch_size) or 1
    workers = wcfg.num_workers or 0
    common: dict[str, Any] = dict(
        collate_fn=collate, num_workers=workers, worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0 and train, pin_memory=bool(pin_memory_device))
    if pin_memory_device and not hasattr(torch, "accelerator"):
        # torch < 2.6 pins for CUDA unless told the device; later versions pin for the
        # current accelerator and deprecate the argument.
        common["pin_memory_device"] = pin_memory_device
    if train:
        batch_sampler = workload.train_batch_sampler(dataset, batch, world_size, rank, seed)
        if batch_sampler is not None:
            if not isinstance(batch_sampler, collections.abc.Sized):
                raise UsageError(f"workload {workload.name}: train_batch_sampler() returned "
                                 f"{type(batch_sampler).__name__} without __len__ (batches per "
                                 f"epoch on this rank)")
            return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    sampler: torch.utils.data.Sampler[int] | None = None
    if train and world_size > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch, shuffle=train and sampler is None,
                      sampler=sampler, drop_last=train, **common)


def check_eval_split(data: Datasets) -> None:
    """Before training: the val split has samples and its first one loads and collates, so
    an empty or broken val split is a DatasetError before step 1, not after the training."""
    val = data.val
    if not isinstance(val, collections.abc.Sized) or isinstance(val, torch.utils.data.IterableDataset):
        return  # an iterable dataset: nothing to look at without consuming it
    if len(val) == 0:
        raise DatasetError("the val split is empty (0 samples): there is nothing to evaluate "
                           "on; check the data's val split (or run with --no-eval)")
    sample = val[0]  # a dataset error here names its file, as it would after training
    collate = data.collate or torch.utils.data.default_collate
    collate([sample])


@dataclasses.dataclass
class PreparedRun:
    """A workload on a set-up backend under a strategy, with its data; no model yet."""

    config: RunConfig
    workload: Workload
    backend: Backend
    strategy: Strategy
    device: torch.device | None = None
    data: Datasets | None = None

    def load_data(self) -> Datasets:
        """Read (or synthesize, then read) the workload's data; datasets() may resolve config
        fields from it, so `self.workload.config` is final only after this."""
        cfg = self.config
        self.data = self.workload.datasets(cfg.data, cache_root(cfg.cache_dir))
        return self.data

    def loader(self, split: Literal["train", "val"]) -> DataLoader:
        if self.data is None:
            raise RuntimeError("PreparedRun.loader() before load_data()")
        pin = self.backend.pin_memory_device()
        dataset = self.data.train if split == "train" else self.data.val
        return make_loader(self.workload, dataset, self.data.collate, train=split == "train",
                           seed=self.config.seed, world_size=self.strategy.world_size,
                           rank=self.strategy.rank, pin_memory_device=pin)

    def close(self) -> None:
        """Release the backend, then the strategy's process group; each step runs even if
        the other raises, and the first error is re-raised."""
        first: BaseException | None = None
        for step in (self.backend.close, self.strategy.teardown):
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - finish every step first
                first = first or exc
        if first is not None:
            raise first


def resolve_run(config: RunConfig, *, workload: Workload | None = None,
                strategy: Strategy | None = None) -> PreparedRun:
    """Stage 1: everything a usage error can come from, before any record or device.

    `workload`: an already built workload (eval from a checkpoint's config); default: the
    preset of `config.scale` with the run's overrides. `strategy`: default chosen from the
    config and the launcher's environment (DeepSpeed, DDP, single process).
    """
    workload = workload if workload is not None else resolve_workload(config)
    check_cache_dir(config.cache_dir, needed=config.data is None)
    backend = prepare_backend(config)
    return PreparedRun(config, workload, backend,
                       strategy if strategy is not None else choose_strategy(config))


def setup_run(prepared: PreparedRun, *, load_data: bool = True) -> PreparedRun:
    """Stage 2: process group, device, precision check, seed (per rank), determinism, data."""
    cfg, backend, strategy = prepared.config, prepared.backend, prepared.strategy
    strategy.setup(backend, cfg, prepared.workload.config)
    prepared.workload.strategy = strategy  # the workload's cross-rank reductions
    prepared.workload.backend_name = backend.name  # a workload's native op kernels
    prepared.workload.op_kernels = [k for k in plugins.get_plugin_manager().hook
                                    .harness_op_kernels(backend=backend.name) if k]
    prepared.device = backend.setup(strategy.local_rank)
    backend.check_precision(cfg.precision)
    backend.seed(cfg.seed + strategy.rank)
    # Augmentations draw from python's and numpy's generators too: same seed, same run.
    random.seed(cfg.seed + strategy.rank)
    np.random.seed((cfg.seed + strategy.rank) % 2**32)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        backend.deterministic()
    if load_data:
        prepared.load_data()
    return prepared


def prepare_run(config: RunConfig, *, workload: Workload | None = None,
                strategy: Strategy | None = None, load_data: bool = True) -> PreparedRun:
    """Both stages; on a failure in the second, what the first opened is closed again."""
    prepared = resolve_run(config, workload=workload, strategy=strategy)
    try:
        return setup_run(prepared, load_data=load_data)
    except BaseException:
        try:
            prepared.close()
        except Exception:  # noqa: BLE001 - the setup error is the one to report
            pass
        raise
