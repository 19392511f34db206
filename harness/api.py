"""The two plugin contracts (Backend, Workload) and the plain data they exchange.

Backends own everything vendor-specific; workloads own model, data and metric; the
runner owns the loop and the clock. Nothing here imports a vendor module.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Sequence

import torch

from harness.errors import UsageError
from harness.workload_config import WorkloadConfig

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.start_weights import WeightLayout
    from harness.strategies import Strategy
    from harness.timing import StepTimer

PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("eager", "lazy", "compile")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["AUTOCAST_DTYPES", "MODES", "PRECISIONS", "Backend", "Capabilities", "Datasets",
           "MemoryStats", "Probe", "Run", "Workload", "WorkloadConfig"]


@dataclasses.dataclass(frozen=True)
class Probe:
    """Whether a backend can run here, and if not, why (one line a user can act on)."""

    available: bool
    reason: str = ""
    device_count: int = 0
    device_name: str = ""


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend supports; the host validates a run's mode/precision against it."""

    precisions: tuple[str, ...] = ("fp32",)
    modes: tuple[str, ...] = ("eager",)
    default_mode: str = "eager"
    # Precisions that need a GradScaler (fp16 almost everywhere).
    scaled_precisions: tuple[str, ...] = ()
    dist_backend: str = "gloo"
    # Reasons shown when a precision or mode is refused, keyed by its name.
    why_not: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # (mode, precision) pairs that are refused even though each is supported alone.
    invalid_pairs: Mapping[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    # Pin host batches (DataLoader pin_memory for this device type): copies from pinned
    # memory run asynchronously, from pageable memory they wait.
    pin_memory: bool = False
    # DeepSpeed's accelerator name for this device (DS_ACCELERATOR); None: no DeepSpeed.
    deepspeed_accelerator: str | None = None


@dataclasses.dataclass
class MemoryStats:
    """Peak memory of a run window. None where the backend cannot know."""

    device_peak_allocated_bytes: int | None = None
    device_peak_reserved_bytes: int | None = None
    host_peak_rss_bytes: int | None = None
    source: str = ""


class Backend(ABC):
    """One accelerator family. Vendor modules are imported lazily, inside methods."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    # torch device type string ("cpu", "cuda", "npu", "hpu").
    device_type: ClassVar[str]
    # True for a backend that runs an exported graph (load_graph) and cannot train: `harness
    # eval` exports or loads the graph for it, `harness run` refuses it.
    inference_only: ClassVar[bool] = False

    def __init__(self, mode: str = "", emulated: bool = False) -> None:
        self.mode = mode or self.capabilities.default_mode
        self.emulated = emulated
        self.device: torch.device | None = None

    # -- discovery and validation (classmethods: no instance, no side effects) --
    @classmethod
    @abstractmethod
    def probe(cls) -> Probe:
        """Import the vendor module and count devices; never raise."""

    @classmethod
    def validate(cls, mode: str, precision: str) -> None:
        """Refuse a mode/precision this backend cannot run, with the reason."""
        caps = cls.capabilities
        if mode not in caps.modes:
            why = caps.why_not.get(mode, "")
            raise UsageError(
                f"backend {cls.name} does not support mode '{mode}'"
                f"{': ' + why if why else ''} (supported: {', '.join(caps.modes)})"
            )
        if precision not in caps.precisions:
            why = caps.why_not.get(precision, "")
            raise UsageError(
                f"backend {cls.name} does not support precision '{precision}'"
                f"{': ' + why if why else ''} (supported: {', '.join(caps.precisions)})"
            )
        why_pair = caps.invalid_pairs.get((mode, precision))
        if why_pair:
            raise UsageError(f"backend {cls.name}: mode {mode} with {precision}: {why_pair}")

    @classmethod
    def emulate(cls) -> None:
        """Install a CPU-emulated stand-in for this backend's device and vendor modules.

        For portability dry runs (`--emulate`) and tests without the hardware.
        """
        raise UsageError(f"backend {cls.name} has no emulated device (--emulate is for npu/hpu)")

    @classmethod
    def can_emulate(cls) -> bool:
        """Whether this backend overrides emulate() (offers `--emulate`)."""
        return cls.emulate.__func__ is not Backend.emulate.__func__  # type: ignore[attr-defined]

    @classmethod
    def environment(cls, mode: str) -> dict[str, str]:
        """Variables to set before the vendor runtime is imported (e.g. PT_HPU_LAZY_MODE)."""
        return {}

    # -- per-run life cycle --
    def prepare_distributed(self) -> None:
        """Called before the process group is created (Gaudi registers "hccl" here)."""

    @abstractmethod
    def setup(self, local_rank: int = 0) -> torch.device:
        """Select the device for this process and return it."""

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def deterministic(self) -> None:
        """Backend-specific determinism switches (cudnn flags, workspace config)."""

    def autocast(self, precision: str) -> contextlib.AbstractContextManager[Any]:
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=AUTOCAST_DTYPES[precision])

    def pin_memory_device(self) -> str:
        """The device type the loaders pin host batches for; "" for none. Emulated devices
        have no pinned host allocator, so they never pin."""
        return self.device_type if self.capabilities.pin_memory and not self.emulated else ""

    def check_precision(self, precision: str) -> None:
        """Device-dependent precision checks, once after setup (bf16 needs sm80+, Gaudi2...)."""

    def grad_scaler(self, precision: str) -> Any | None:
        """A GradScaler for the precisions in capabilities.scaled_precisions, else None."""
        if precision in self.capabilities.scaled_precisions:
            return torch.amp.GradScaler(self.device_type)
        return None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Mode-specific model preparation (torch.compile, graph wrapping)."""
        return model

    def after_backward(self) -> None:
        """Called after each backward (HPU lazy flushes its graph here)."""

    def after_optimizer_step(self) -> None:
        """Called after each optimizer step."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait for all queued device work; called at timing window boundaries only."""

    def reset_peak_memory(self) -> None:
        pass

    def memory(self) -> MemoryStats:
        return MemoryStats()

    def trace(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A named range for the vendor profiler (nvtx, mstx, record_function)."""
        return torch.autograd.profiler.record_function(name)

    def describe(self) -> dict[str, Any]:
        """Device, driver and runtime versions for the record's env."""
        return {}

    def fallback_report(self) -> list[str]:
        """Ops that fell back to the CPU, where the vendor makes that knowable."""
        return []

    def close(self) -> None:
        """Release anything setup() acquired (warning filters, profilers)."""

    def label(self) -> str:
        """How tables name what ran (the agreement check's "test" side): the backend's name,
        plus what it ran on where that is chosen at run time (ONNX Runtime's providers)."""
        return self.name

    # -- inference-only backends (inference_only = True) --
    def load_graph(self, onnx_path: Path, torch_model: torch.nn.Module, out_spec: Any,
                   example_args: tuple[torch.Tensor, ...]) -> torch.nn.Module:
        """A module running the exported graph at `onnx_path` in place of `torch_model`
        (same call, outputs in `out_spec`'s structure). Only inference-only backends run
        graphs; the others run the PyTorch model itself."""
        raise UsageError(f"backend {self.name} runs PyTorch models, not exported graphs")


@dataclasses.dataclass
class Datasets:
    """What a workload's data amounts to: the two splits and how to batch them."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    collate: Any = None  # collate_fn for both loaders; None means torch's default
    source: str = ""  # where it came from (a path, or "synthetic:<cache dir>")
    # Config fields datasets() took from the data -> the file (or reason) they came from.
    from_data: dict[str, str] = dataclasses.field(default_factory=dict)


class Workload(ABC):
    """A model with its data, loss and official metric. Device-agnostic code only."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type]  # a frozen dataclass deriving from WorkloadConfig
    # metric name -> "higher" or "lower" (which direction is better)
    metrics: ClassVar[Mapping[str, str]] = {}
    primary_metric: ClassVar[str] = ""
    # Importable modules this workload needs beyond the core, and the extra providing them.
    requires: ClassVar[Sequence[str]] = ()
    extra: ClassVar[str] = ""

    def __init__(self, config: Any, user_set: frozenset[str] = frozenset()) -> None:
        from harness.strategies import Strategy

        self.config: WorkloadConfig = config
        # Config fields the user set explicitly (--set keys, --batch-size...): datasets() may
        # replace the others with values taken from the data, never these.
        self.user_set = frozenset(user_set)
        # The run's strategy; the host sets it before data and model are built. Cross-rank
        # reductions inside the loss (a normaliser averaged over ranks) go through it, so a
        # workload never calls torch.distributed itself. A single process until then.
        self.strategy: Strategy = Strategy()
        # The run's backend name, set by the host with the strategy: a workload that takes
        # native kernels from backend plugins (harness_op_kernels) asks for this one's.
        self.backend_name: str = ""
        # What backend plugins offered for that backend through harness_op_kernels (op name ->
        # native kernel, one dict per plugin), collected by the host; default none.
        self.op_kernels: list[dict[str, Any]] = []

    @classmethod
    @abstractmethod
    def presets(cls) -> dict[str, Any]:
        """At least "smoke" (2 CPU cores, minutes, synthetic data) and "full" (published)."""

    @abstractmethod
    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        """Real-format readers; with no data_root, write synthetic data to cache_dir first."""

    @abstractmethod
    def build_model(self) -> torch.nn.Module: ...

    @abstractmethod
    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer: ...

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any | None:
        return None

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Named loss terms as the original logs them; the harness sums them."""

    @abstractmethod
    def predict(self, model: torch.nn.Module, batch: Any) -> list[Any]:
        """Predictions for one eval batch, moved to the CPU, ready for evaluate()."""

    @abstractmethod
    def evaluate(self, predictions: list[Any]) -> dict[str, float]:
        """The official metric over all predictions of the val split."""

    def train_batch_sampler(self, dataset: Any, batch_size: int, world_size: int, rank: int,
                            seed: int) -> Iterable[list[int]] | None:
        """Optional: the training batches as lists of indices, for this rank.

        None (the default) lets the harness shuffle (DistributedSampler under DDP). An
        object returned here becomes the training DataLoader's `batch_sampler`; it must
        shard by `rank` itself, have `__len__` (batches per epoch on this rank), and may
        have `set_epoch(epoch)`, which the harness calls at the start of every epoch.
        """
        return None

    def write_predictions(self, predictions: list[Any], out_dir: Path) -> dict[str, Any] | None:
        """Optional: write the eval split's predictions in the official submission format.

        `predictions` is what predict() produced over the val split, in order; `out_dir`
        (`<run folder>/predictions`) exists. Return {"format", "path" (absolute), "split",
        "ground_truth"}; the harness stores it as the record's `predictions`.
        """
        return None

    def samples(self, batch: Any) -> int:
        """What FPS counts in a batch (images, multi-camera frames); no device sync."""
        first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()))
        return int(first.shape[0])

    # -- optional: predict() split in two, so `harness eval` times the network apart --
    def forward_for_eval(self, model: torch.nn.Module, batch: Any) -> Any:
        """The network's raw outputs for an eval batch, on the device (what an exported graph
        computes). Override together with postprocess(), such that
        postprocess(model, forward_for_eval(model, batch), batch) == predict(model, batch)."""
        raise NotImplementedError(f"workload {self.name} does not split predict()")

    def postprocess(self, model: torch.nn.Module, outputs: Any, batch: Any) -> list[Any]:
        """forward_for_eval()'s outputs decoded to what predict() returns."""
        raise NotImplementedError(f"workload {self.name} does not split predict()")

    def splits_predict(self) -> bool:
        """Whether this workload overrides forward_for_eval() and postprocess()."""
        cls = type(self)
        return (cls.forward_for_eval is not Workload.forward_for_eval
                and cls.postprocess is not Workload.postprocess)

    # -- optional: state that lives across steps (a streaming memory) --
    def state_dict(self) -> dict[str, Any] | None:
        """The workload's own state beyond model and optimizer, for a checkpoint (CPU
        tensors and plain values); None (the default): it has none."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what state_dict() returned (after build_model())."""
        raise UsageError(f"checkpoint holds workload state but workload {self.name} has no "
                         f"load_state_dict()")

    # -- optional: starting weights in the originals' layouts (harness/start_weights.py) --
    def weight_layouts(self, part: str) -> Sequence[WeightLayout]:
        """The original layouts this workload reads for `part`: "backbone" (a pretrained
        backbone, `--set backbone_weights=`) or "model" (a released whole-model checkpoint,
        `--set init_checkpoint=`, `harness eval --checkpoint`). This project's own names are
        always read; default: no other layout."""
        return ()

    def backbone(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The submodule `backbone_weights` is loaded into; default the model's `backbone`,
        None when it has none (the option is then refused)."""
        try:
            return model.get_submodule("backbone")
        except AttributeError:
            return None

    def source_info(self) -> dict[str, Any] | None:
        """Where a workload built from a user's file came from, for the record's
        `workload_source` (the file, its hash, the options applied); None (the default): a
        built-in workload, named by its name."""
        return None

    # -- optional: how the run speaks of this workload --
    def console_line(self, run: Run, row: dict[str, Any]) -> str | None:
        """The console line of a log row (`run.last_log`) in the style of the workload's
        original scripts; None (the default): the harness's own line."""
        return None

    def memory_hints(self) -> list[str]:
        """Options of this workload that lower memory, for an out-of-memory hint
        (e.g. "--set with_cp=true (activation checkpointing)"); default none."""
        return []


@dataclasses.dataclass
class Run:
    """What observers see of a run (the hooks' `run` argument); the loop updates it."""

    config: RunConfig
    workload: Workload
    backend: Backend
    strategy: Strategy
    out_dir: Path
    total_steps: int = 0
    steps_per_epoch: int = 0
    step: int = 0
    micro_steps: int = 0
    epoch: int = 0
    started: float = dataclasses.field(default_factory=time.time)
    last_log: dict[str, Any] | None = None  # host values, set at log steps only
    losses: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    timer: StepTimer | None = None
    memory: MemoryStats | None = None  # peaks of the training window
    trained_model: Any = None
    optimizer: Any = None
    model_info: dict[str, Any] | None = None  # params and training FLOPs per sample
    # The files the model started from (harness/start_weights.py); empty: random weights.
    start_weights: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ema: Any = None  # harness.ema.ModelEMA when the workload config asks for one
    # Where record.json went (the fallback path when out_dir could not take it); set at the end.
    record_path: Path | None = None
