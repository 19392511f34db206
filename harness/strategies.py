"""How model and optimizer are wrapped and stepped: single process, DDP (DeepSpeed lives in
harness/deepspeed_strategy.py; harness/prepare.py chooses one). The runner talks to one
`Strategy` and never branches on it; what a strategy may or may not do is declared here, on
the base class, with the single-process default.
"""
from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager, TypeVar

import torch

if TYPE_CHECKING:
    from harness.api import Backend
    from harness.config import RunConfig

T = TypeVar("T")
# How long the other ranks wait while rank 0 evaluates (host-side gloo barrier, so no device
# collective watchdog fires): a full nuScenes val pass plus the devkit's scoring fits easily.
MAIN_ONLY_TIMEOUT = timedelta(hours=float(os.environ.get("HARNESS_EVAL_WAIT_HOURS") or 6))


class Strategy:
    """Single process: plain autograd, optional GradScaler, grad clipping."""

    name = "single"
    # True where the strategy applies its own loss scaling (no harness GradScaler then).
    scales_loss = False
    # True where the strategy casts the weights to the run's precision (DeepSpeed bf16/fp16)
    # instead of keeping them fp32 under autocast: the record's weights_dtype.
    low_precision_weights: ClassVar[bool] = False
    # The engine writes model and optimizer state itself (DeepSpeed: save_engine_checkpoint /
    # load_engine_checkpoint); the checkpoint manager then commits its files.
    saves_own_checkpoint: ClassVar[bool] = False

    def __init__(self) -> None:
        self.world_size = 1
        self.rank = 0
        self.local_rank = 0
        self.grad_accum = 1
        self.workload_config: Any = None
        self._wait_group: Any = None  # process group for on_main_only's barriers

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, backend: Backend, run: RunConfig, workload_config: Any = None) -> None:
        self.grad_accum = run.grad_accum
        self.workload_config = workload_config

    def wrap(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: RunConfig
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        return model, optimizer

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        inner = getattr(model, "module", model)
        return getattr(inner, "_orig_mod", inner)  # torch.compile's wrapper

    def micro_step(self, model: torch.nn.Module, last: bool) -> ContextManager[Any]:
        """Wraps one micro-batch's forward and backward; `last` is the accumulation boundary.

        Single process: nothing to do. DDP skips the gradient all-reduce on all but the last.
        """
        return contextlib.nullcontext()

    def on_main_only(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 while the other ranks wait at a barrier; None on those ranks.

        For work outside the collective schedule (evaluation between training steps): nothing
        else may be in flight on any rank, so no rank can enter a collective that rank 0 does
        not match. Multi-process strategies without their own wait group (DeepSpeed) wait on
        the default group.
        """
        if self.world_size == 1:
            return fn()
        import torch.distributed as dist

        dist.barrier(group=self._wait_group)  # every rank is done with its step's collectives
        try:
            return fn() if self.is_main else None
        finally:
            # Rank 0 reaches this barrier even when fn raises, so the others are released
            # and end on their own (the launcher then stops them with rank 0's failure).
            dist.barrier(group=self._wait_group)

    def backward(self, loss: torch.Tensor, scaler: Any | None) -> None:
        # Average, not sum, over accumulated micro-batches: the lr means the same at any N.
        loss = loss / self.grad_accum
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def optimizer_step(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
        scaler: Any | None, grad_clip: float | None,
    ) -> torch.Tensor | None:
        """Step once; return the grad norm as a device tensor (no sync), or None."""
        grad_norm = None
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grad_clip is not None and grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        elif params:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad.detach()) for p in params]))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def optimizer_steps_taken(self, optimizer: torch.optim.Optimizer, default: int) -> int:
        return default

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any (a stop request that reached some
        ranks, or reached them in different steps, ends all of them after the same step).
        A host-side all-reduce of one integer per call where there are several ranks."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._wait_group)
        return bool(value.item())

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` (CPU tensors, plain values) in rank order on rank 0; None on
        the others. Over the host-side wait group where there is one, so nothing goes
        through the device's collectives."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0, group=self._wait_group)
        return gathered

    def mean_across_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the data-parallel ranks (mmdet's reduce_mean: a loss
        normaliser counted over the global batch), through the default process group, so on
        the device's collectives and inside the step's collective schedule: every rank must
        call it at the same point of its loss. Identity in a single process."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size

    def teardown(self) -> None:
        pass


class DDPStrategy(Strategy):
    """torch DistributedDataParallel, launched by `harness run --nproc N` (torchrun)."""

    name = "ddp"

    def __init__(self) -> None:
        super().__init__()
        # Known from the launcher before setup, so the record's first write (status running,
        # what a SIGKILLed run leaves) already names the world size a resume must match.
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))

    def setup(self, backend: Backend, run: RunConfig, workload_config: Any = None) -> None:
        super().setup(backend, run, workload_config)
        import torch.distributed as dist

        self.rank = int(os.environ["RANK"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ["WORLD_SIZE"])
        backend.prepare_distributed()
        if not dist.is_initialized():
            dist.init_process_group(backend=backend.capabilities.dist_backend)
        # A host-side group for waiting on rank 0: a device barrier (nccl/hccl) would run into
        # the collective watchdog's timeout during a long evaluation.
        self._wait_group = dist.new_group(backend="gloo", timeout=MAIN_ONLY_TIMEOUT)

    def wrap(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: RunConfig
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index] if device.type != "cpu" and device.index is not None else None
        return DistributedDataParallel(model, device_ids=ids), optimizer

    def micro_step(self, model: torch.nn.Module, last: bool) -> ContextManager[Any]:
        # Gradients of the earlier micro-batches accumulate locally; the last backward
        # all-reduces the sum once (forward and backward must both be inside no_sync).
        no_sync = getattr(model, "no_sync", None)
        return contextlib.nullcontext() if last or no_sync is None else no_sync()

    def teardown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

