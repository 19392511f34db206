"""ONNX Runtime as an inference-only backend: `harness eval ... --backend onnxruntime`.

The network forward runs as an exported ONNX graph in an InferenceSession; everything around
it (pre-processing, decoding, the metric) is the workload's PyTorch/Python code, unchanged, so
a difference between this backend and PyTorch is the graph's. Execution providers: CUDA
(then others) where that onnxruntime build has them, else CPU; `HARNESS_ORT_PROVIDERS`
(comma-separated) picks them explicitly. It cannot train: `harness run` refuses it.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from harness import Backend, Capabilities, MemoryStats, Probe, UsageError, hookimpl
from harness.memory import host_rss_peak_bytes, reset_host_rss_peak

if TYPE_CHECKING:
    from harness.config import RunConfig

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                       "ROCMExecutionProvider", "OpenVINOExecutionProvider",
                       "CPUExecutionProvider")


class GraphModule(torch.nn.Module):
    """An ONNX Runtime session behind the nn.Module call the workload makes.

    Takes and returns torch tensors (CPU) shaped like the PyTorch model's outputs (the
    output structure is the PyTorch model's, kept as a pytree spec). The PyTorch model stays
    reachable as `.module`, like DDP's wrapper, for workloads that read attributes (priors,
    strides) off it while decoding.
    """

    def __init__(self, session: Any, torch_model: torch.nn.Module, out_spec: Any) -> None:
        super().__init__()
        object.__setattr__(self, "module", torch_model)
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.out_spec = out_spec

    def forward(self, *args: torch.Tensor) -> Any:
        if len(args) != len(self.input_names):
            raise ValueError(f"the ONNX graph takes {len(self.input_names)} inputs, got {len(args)}")
        feed = {n: a.detach().cpu().contiguous().numpy() for n, a in zip(self.input_names, args)}
        outs = [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feed)]
        return torch.utils._pytree.tree_unflatten(outs, self.out_spec)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    device_type = "cpu"  # tensors around the graph live on the host
    description = "ONNX Runtime (exported graph; inference only: harness eval)"
    inference_only: ClassVar[bool] = True
    capabilities = Capabilities(
        precisions=("fp32",), modes=("eager",), default_mode="eager",
        why_not={"bf16": "the exported graph is fp32; quantize or convert it outside the harness",
                 "fp16": "the exported graph is fp32; quantize or convert it outside the harness",
                 "lazy": "ONNX Runtime runs the whole graph per call",
                 "compile": "ONNX Runtime optimises the graph itself (session options)"},
    )

    def __init__(self, mode: str = "", emulated: bool = False) -> None:
        super().__init__(mode, emulated)
        self.providers: list[str] = []

    @classmethod
    def probe(cls) -> Probe:
        try:
            import onnxruntime as ort
        except ImportError:
            return Probe(False, "onnxruntime is not installed: pip install "
                                "'perception-harness[onnx]'")
        except Exception as exc:  # noqa: BLE001 - a broken install must say why
            return Probe(False, f"onnxruntime failed to import: {exc!r}")
        providers = ort.get_available_providers()
        return Probe(True, device_count=1, device_name=providers[0] if providers else "")

    @staticmethod
    def choose_providers(available: list[str]) -> list[str]:
        wanted = [p.strip() for p in os.environ.get("HARNESS_ORT_PROVIDERS", "").split(",")
                  if p.strip()]
        if wanted:
            missing = [p for p in wanted if p not in available]
            if missing:
                raise UsageError(f"HARNESS_ORT_PROVIDERS asks for {', '.join(missing)}, not in "
                                 f"this onnxruntime (available: {', '.join(available)})")
            return wanted
        chosen = [p for p in PREFERRED_PROVIDERS if p in available]
        return chosen or list(available)

    def setup(self, local_rank: int = 0) -> torch.device:
        import onnxruntime as ort

        self.providers = self.choose_providers(ort.get_available_providers())
        self.device = torch.device("cpu")
        return self.device

    def load_graph(self, onnx_path: Path, torch_model: torch.nn.Module, out_spec: Any,
                   example_args: tuple[torch.Tensor, ...]) -> GraphModule:
        """A session on `onnx_path`, checked against the PyTorch call it stands in for."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: a warning per unused initializer is noise
        # Idle intra-op threads spin by default, taking the cores the Python decoding after
        # each call needs (measured: postprocessing 6x slower on 2 cores).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(onnx_path), sess_options=opts,
                                       providers=self.providers or None)
        self.providers = session.get_providers()
        inputs = session.get_inputs()
        if len(inputs) != len(example_args):
            raise UsageError(f"{onnx_path}: the graph takes {len(inputs)} inputs, the workload "
                             f"passes {len(example_args)}")
        for node, arg in zip(inputs, example_args):
            fixed = [d if isinstance(d, int) else None for d in node.shape]
            want = list(arg.shape)
            if len(fixed) != len(want) or any(f is not None and f != w
                                              for f, w in zip(fixed[1:], want[1:])):
                raise UsageError(f"{onnx_path}: input {node.name} has shape {node.shape}, the "
                                 f"workload's batches give {tuple(want)} (exported for another "
                                 f"input size? re-export with this config)")
        return GraphModule(session, torch_model, out_spec)

    def label(self) -> str:
        return f"{self.name} ({', '.join(self.providers or ['?'])})"

    def synchronize(self) -> None:
        # session.run returns when the outputs are on the host: nothing stays queued.
        pass

    def reset_peak_memory(self) -> None:
        reset_host_rss_peak()

    def memory(self) -> MemoryStats:
        peak = host_rss_peak_bytes()
        on_host = not self.providers or self.providers[0] == "CPUExecutionProvider"
        return MemoryStats(device_peak_allocated_bytes=peak if on_host else None,
                           device_peak_reserved_bytes=peak if on_host else None,
                           host_peak_rss_bytes=peak, source="host_rss")

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"device_name": self.providers[0] if self.providers else "",
                "onnxruntime": ort.__version__, "ort_providers": list(self.providers),
                "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


@hookimpl
def harness_backends() -> list[type[Backend]]:
    return [OnnxRuntimeBackend]


@hookimpl
def harness_configure(config: RunConfig) -> None:
    """`harness run` configures plugins before a run starts: refuse inference-only backends."""
    from harness import plugins

    backend = config.backend
    backend_cls = plugins.backends().get(backend)
    if backend_cls is not None and backend_cls.inference_only:
        raise UsageError(f"backend {backend} is inference-only and cannot train; train on a "
                         f"training backend, then `harness export` and `harness eval "
                         f"--backend {backend}`")
