"""DeepSpeed: its engine owns the model, the (wrapped) optimizer, precision and accumulation.

The runner calls `backward` once per micro-batch and `optimizer_step` once per accumulation
boundary. DeepSpeed wants `engine.backward(loss)` and `engine.step()` on every micro-batch
(step() counts micro-batches and only updates the weights at the boundary), so both happen in
`backward`, and `optimizer_step` only reports the grad norm: nothing is stepped twice.

Without a config file the config is built from the run: micro batch = the workload's batch
size, gradient_accumulation_steps = --grad-accum, bf16/fp16 from --precision, gradient
clipping from the workload's grad_clip, ZeRO stage 0. A JSON file (`--deepspeed FILE`) gives
full control (ZeRO stage, offload; an "optimizer" section replaces the workload's optimizer);
the keys the harness loop depends on (accumulation, bf16/fp16) must agree with the run's options.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.errors import MissingExtra, UsageError
from harness.strategies import MAIN_ONLY_TIMEOUT, Strategy
from harness.workload_config import WorkloadConfig

if TYPE_CHECKING:
    from harness.api import Backend
    from harness.config import RunConfig


def engine_safe_globals() -> list[Any]:
    """DeepSpeed's data-only classes in its checkpoints (ZeRO optimizer files hold the loss
    scaler object, the stage enum, fragment addresses): allowed for weights_only unpickling,
    which builds them from their fields without calling any of their code."""
    found: list[Any] = []
    for module, name in (("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                         ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                         ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                         ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: that file is then refused, not loaded unsafely
    return found


def load_engine_file(path: Path) -> Any:
    """One of the engine's checkpoint files, weights_only with DeepSpeed's data classes."""
    from harness.safe_load import safe_torch_load

    with torch.serialization.safe_globals(engine_safe_globals()):
        return safe_torch_load(path)


class _WeightsOnlyLoads:
    """A DeepSpeed checkpoint engine whose load() is torch.load(weights_only=True); the rest
    (save, commit, ...) is the wrapped engine's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_engine_file(Path(path))  # onto the CPU; the engine copies into its params

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"
    # Only fp16 runs under the engine's dynamic loss scaler, which skips steps whose grads
    # overflow (an inf grad norm is routine there); bf16/fp32 runs keep the divergence stop.
    scales_loss = False
    # bf16/fp16 configs make the engine cast the model itself (fp32 masters in the optimizer).
    low_precision_weights = True
    saves_own_checkpoint = True

    def __init__(self, config_path: str = "") -> None:
        super().__init__()
        if importlib.util.find_spec("deepspeed") is None:
            raise MissingExtra("--deepspeed needs DeepSpeed: pip install 'perception-harness[deepspeed]'")
        self.config_path = config_path
        # From the launcher's environment before setup, so the first record names it.
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.engine: Any = None
        self._started_dist = False
        self._env_added: list[str] = []  # launcher variables set here, removed at teardown

    # -- setup: process group and accelerator, before any engine exists --
    def setup(self, backend: Backend, run: RunConfig, workload_config: Any = None) -> None:
        super().setup(backend, run, workload_config)
        self.scales_loss = run.precision == "fp16"
        accel = backend.capabilities.deepspeed_accelerator
        if accel is None:
            raise UsageError(f"--deepspeed: backend {backend.name} names no DeepSpeed "
                             f"accelerator (Capabilities.deepspeed_accelerator)")
        preset = os.environ.get("DS_ACCELERATOR")
        if preset is not None and preset != accel:
            raise UsageError(f"--deepspeed: DS_ACCELERATOR={preset} in the environment, but the "
                             f"backend is {backend.name} (DS_ACCELERATOR={accel}); unset it")
        os.environ["DS_ACCELERATOR"] = accel  # read when deepspeed first picks its accelerator
        # A single process has no launcher: without these DeepSpeed goes looking for MPI.
        # They are removed again at teardown, so a later run (or a child process) does not
        # inherit this run's rendezvous port.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "")):
            if key not in os.environ:
                os.environ[key] = value or str(_free_port())
                self._env_added.append(key)
        self.rank = int(os.environ["RANK"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        import deepspeed
        import torch.distributed as dist

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        backend.prepare_distributed()  # e.g. Gaudi registers its "hccl" process group here
        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend=backend.capabilities.dist_backend,
                                       auto_mpi_discovery=False, verbose=False)
            self._started_dist = True
        if self.world_size > 1:
            # Host-side group for waiting on rank 0 and gathering checkpoint shares, as DDP's.
            self._wait_group = dist.new_group(backend="gloo", timeout=MAIN_ONLY_TIMEOUT)

    # -- config --
    def build_config(self, run: RunConfig) -> dict[str, Any]:
        # The workload's config once setup() ran; before (a config file checked on its own)
        # WorkloadConfig's declared defaults apply.
        cfg = self.workload_config or WorkloadConfig()
        batch = int(cfg.batch_size or 1)
        grad_clip = cfg.grad_clip
        if not self.config_path:
            return {
                "train_micro_batch_size_per_gpu": batch,
                "gradient_accumulation_steps": run.grad_accum,
                "gradient_clipping": float(grad_clip or 0.0),
                "bf16": {"enabled": run.precision == "bf16"},
                "fp16": {"enabled": run.precision == "fp16"},
                "zero_optimization": {"stage": 0},
                "steps_per_print": 2**31 - 1,  # the harness logs; keep DeepSpeed quiet
            }
        path = Path(self.config_path)
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"--deepspeed {path}: no such file") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"--deepspeed {path}: not valid JSON ({exc})") from None
        gas = config.setdefault("gradient_accumulation_steps", run.grad_accum)
        if gas != run.grad_accum:
            raise UsageError(f"--deepspeed {path}: gradient_accumulation_steps is {gas} but "
                             f"--grad-accum is {run.grad_accum}; make them agree")
        if "train_batch_size" not in config:
            config.setdefault("train_micro_batch_size_per_gpu", batch)
        for kind in ("bf16", "fp16"):
            enabled = bool(config.get(kind, {}).get("enabled", False))
            if enabled != (run.precision == kind):
                raise UsageError(f"--deepspeed {path}: {kind}.enabled is {enabled} but --precision "
                                 f"is {run.precision}; make them agree")
        return config

    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             run: RunConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        import deepspeed

        config = self.build_config(run)
        if "optimizer" in config:
            # The file's optimizer (and scheduler, if any) replace the workload's: full control.
            self.engine, ds_optimizer, _, _ = deepspeed.initialize(
                model=model, config=config,
                model_parameters=[p for p in model.parameters() if p.requires_grad])
        else:
            self.engine, ds_optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, config=config)
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}
        dtype = next((half[k] for k in half if config.get(k, {}).get("enabled")), None)
        if dtype is not None:
            # The engine casts parameters to bf16/fp16 but leaves buffers (BatchNorm running
            # stats) in fp32, and batch_norm refuses mixed dtypes: cast them alike.
            for buf in self.engine.module.buffers():
                if buf.is_floating_point():
                    buf.data = buf.data.to(dtype)
        return self.engine, ds_optimizer

    # -- the loop --
    def backward(self, loss: torch.Tensor, scaler: Any | None) -> None:
        # The engine divides by gradient_accumulation_steps and applies its own loss scaling
        # (a harness GradScaler, if the backend made one, is not used).
        self.engine.backward(loss)
        self.engine.step()  # updates weights only at the accumulation boundary

    def optimizer_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       scaler: Any | None, grad_clip: float | None) -> torch.Tensor | None:
        # The boundary's engine.step() already ran inside backward(); report its grad norm.
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            return None
        return norm.detach().float() if isinstance(norm, torch.Tensor) else torch.tensor(float(norm))

    def optimizer_steps_taken(self, optimizer: torch.optim.Optimizer, default: int) -> int:
        return int(self.engine.global_steps) if self.engine is not None else default

    # -- periodic checkpoints (harness/checkpoint_dist.py): the engine's own format --
    def save_engine_checkpoint(self, folder: Path, tag: str) -> None:
        """Model, fp32 master weights, optimizer (ZeRO shards per rank) and the engine's step
        counters, written by the engine on every rank (a collective)."""
        self.engine.save_checkpoint(str(folder), tag=tag, client_state={}, save_latest=False)

    def load_engine_checkpoint(self, folder: Path, tag: str) -> None:
        """The engine's load_checkpoint, with every file it reads unpickled weights_only
        (DeepSpeed's own loader would accept any pickle: a received checkpoint could run code)."""
        inner = self.engine.checkpoint_engine
        self.engine.checkpoint_engine = _WeightsOnlyLoads(inner)
        try:
            path, _ = self.engine.load_checkpoint(str(folder), tag=tag, load_module_strict=True)
        finally:
            self.engine.checkpoint_engine = inner
        if path is None:
            raise UsageError(f"DeepSpeed could not load checkpoint {tag} from {folder}")

    def teardown(self) -> None:
        destroy = getattr(self.engine, "destroy", None)
        if destroy is not None:
            destroy()
        import torch.distributed as dist

        if self._started_dist and dist.is_initialized():
            dist.destroy_process_group()
            # DeepSpeed keeps a clone of the world group in a module global; after the group
            # is destroyed the clone is stale and the next engine in this process fails
            # ("Group ... is not registered"): runs in one process (pytest, notebooks).
            try:
                from deepspeed.utils import groups as ds_groups

                ds_groups._WORLD_GROUP = None
            except (ImportError, AttributeError):
                pass
        for key in self._env_added:
            os.environ.pop(key, None)
        self._env_added = []

