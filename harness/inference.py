"""The inference loop of `harness eval`: timed batches, and raw-output agreement of two models.

Timing: the first `warmup` batches are run but not timed (allocator, kernel selection, graph
capture); then a synchronized window measures samples/s end to end (data, forward,
postprocessing). Each timed batch is also synchronized at its end, so per-batch latency is
real (what a deployment waiting for one batch sees). Where the workload splits predict() into
`forward_for_eval` + `postprocess`, the forward pass is synchronized and timed apart from the
decoding; otherwise predict() is timed as one piece and the record says so.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable

import numpy as np
import torch

from harness.api import Backend, Workload
from harness.profiling import StepProfiler
from harness.timing import percentile
from harness.training import to_device

# Decoded predictions count as equal when every number agrees to this (boxes in pixels,
# scores, lane x positions): far below anything a metric resolves, far above float noise.
DECODED_RTOL, DECODED_ATOL = 1e-3, 1e-3
# Raw outputs: the tolerance `harness parity` judges ONNX against PyTorch by.
RAW_RTOL, RAW_ATOL = 1e-3, 1e-5


def splits_forward(workload: Workload) -> bool:
    """Whether the workload offers the optional eval split of predict() (Workload's
    `forward_for_eval` + `postprocess`, see there). An object that only looks like a
    workload (a test's stand-in with predict()) is not a Workload and has no split."""
    return isinstance(workload, Workload) and workload.splits_predict()


def predict_batch(workload: Workload, model: Any, batch: Any) -> list[Any]:
    if splits_forward(workload):
        return workload.postprocess(model, workload.forward_for_eval(model, batch), batch)
    return workload.predict(model, batch)


@dataclasses.dataclass
class InferenceResult:
    predictions: list[Any]
    throughput: dict[str, Any]
    batches: int
    seconds: float  # the whole pass, warmup included


def run_inference(workload: Workload, model: Any, batches: Iterable[Any], backend: Backend,
                  precision: str, warmup: int, batch_size: int,
                  profiler: StepProfiler | None = None) -> InferenceResult:
    """`profiler`: started with the timed window, stepped after each timed batch."""
    device = backend.device if backend.device is not None else torch.device("cpu")
    split = splits_forward(workload)
    predictions: list[Any] = []
    forward_s: list[float] = []
    post_s: list[float] = []
    batch_s: list[float] = []
    data_s: list[float] = []
    timed_samples = 0
    window_start: float | None = None
    started = time.perf_counter()
    iterator = iter(batches)
    index = 0
    with torch.no_grad():
        while True:
            t_data = time.perf_counter()
            with backend.trace("eval_data"):
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                samples = workload.samples(batch)
                batch = to_device(batch, device)
            if index == warmup:
                backend.synchronize()
                backend.reset_peak_memory()
                window_start = time.perf_counter()
                if profiler is not None:
                    profiler.start()
            t0 = time.perf_counter()
            with backend.autocast(precision):
                if split:
                    with backend.trace("eval_forward"):
                        outputs = workload.forward_for_eval(model, batch)
                        backend.synchronize()
                    t1 = time.perf_counter()
                    with backend.trace("eval_postprocess"):
                        preds = workload.postprocess(model, outputs, batch)
                else:
                    with backend.trace("eval_predict"):
                        preds = workload.predict(model, batch)
                    t1 = None
            backend.synchronize()
            t2 = time.perf_counter()
            if profiler is not None and profiler.active:
                profiler.step()
            predictions.extend(preds)
            if window_start is not None:
                timed_samples += samples
                data_s.append(t0 - t_data)
                batch_s.append(t2 - t0)
                if t1 is not None:
                    forward_s.append(t1 - t0)
                    post_s.append(t2 - t1)
            index += 1
    backend.synchronize()
    end = time.perf_counter()
    if profiler is not None:
        profiler.stop()  # fewer timed batches than profiled steps: keep what was recorded
    window = end - window_start if window_start is not None else None
    throughput: dict[str, Any] = {
        "samples_per_s": timed_samples / window if window else None,
        "window_s": window, "timed_batches": len(batch_s), "warmup_batches": min(warmup, index),
        "batch_size": batch_size, "timed_samples": timed_samples,
        "timing_split": "forward_for_eval+postprocess" if split else "predict (not separable)",
        "latency_s_p50": percentile(batch_s, 50), "latency_s_p90": percentile(batch_s, 90),
        "forward_s_p50": percentile(forward_s, 50), "forward_s_p90": percentile(forward_s, 90),
        "postprocess_s_p50": percentile(post_s, 50), "postprocess_s_p90": percentile(post_s, 90),
        "forward_samples_per_s": (timed_samples / sum(forward_s)
                                  if forward_s and sum(forward_s) > 0 else None),
        "data_time_s_p50": percentile(data_s, 50),
        "batch_times_s": [round(t, 6) for t in batch_s],
    }
    # Under the names training records use, so parity and gate read eval records alike.
    throughput["timed_steps"] = throughput["timed_batches"]
    throughput["step_times_s"] = throughput["batch_times_s"]
    return InferenceResult(predictions, throughput, index, end - started)


# ------------------------------------------------------------------ raw-output agreement
class CallRecorder(torch.nn.Module):
    """Wraps a model and keeps the arguments and outputs of each call.

    Exposes the wrapped model as `.module`, like DDP, so workloads that unwrap wrappers
    (to reach priors, strides...) still find it.
    """

    def __init__(self, module: Any) -> None:
        super().__init__()
        object.__setattr__(self, "module", module)  # not a submodule: no parameter copies
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.module(*args, **kwargs)  # type: ignore[operator]
        self.calls.append((args, kwargs, out))
        return out


def _flat_tensors(obj: Any) -> list[torch.Tensor]:
    leaves = torch.utils._pytree.tree_leaves(obj)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def same_prediction(a: Any, b: Any) -> bool:
    """Structural equality with a small numeric tolerance (see DECODED_RTOL/ATOL)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_prediction(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_prediction(x, y) for x, y in zip(a, b))
    if isinstance(a, (torch.Tensor, np.ndarray)) or isinstance(b, (torch.Tensor, np.ndarray)):
        x = np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a)
        y = np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b)
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            return bool(np.allclose(x, y, rtol=DECODED_RTOL, atol=DECODED_ATOL, equal_nan=True))
        return bool(np.array_equal(x, y))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return bool(np.isclose(float(a), float(b), rtol=DECODED_RTOL, atol=DECODED_ATOL))
        except (TypeError, ValueError):
            return False
    return bool(a == b)


class _Diff:
    def __init__(self, name: str) -> None:
        self.name = name
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.outside = 0
        self.count = 0
        self.ref_max_abs = 0.0

    def add(self, test: torch.Tensor, ref: torch.Tensor) -> None:
        t, r = test.detach().double().cpu(), ref.detach().double().cpu()
        if t.shape != r.shape:
            raise ValueError(f"output {self.name}: shape {tuple(t.shape)} vs {tuple(r.shape)}")
        diff = (t - r).abs()
        if diff.numel():
            self.max_abs = max(self.max_abs, float(diff.max()))
            # Relative to the reference, where the reference is not ~0 (else it means nothing).
            big = r.abs() > RAW_ATOL
            if big.any():
                self.max_rel = max(self.max_rel, float((diff[big] / r.abs()[big]).max()))
            self.ref_max_abs = max(self.ref_max_abs, float(r.abs().max()))
        self.outside += int((diff > RAW_ATOL + RAW_RTOL * r.abs()).sum())
        self.count += diff.numel()

    def summary(self) -> dict[str, Any]:
        return {"output": self.name, "max_abs_diff": self.max_abs, "max_rel_diff": self.max_rel,
                "ref_max_abs": self.ref_max_abs, "elements": self.count,
                "fraction_outside_tol": self.outside / self.count if self.count else 0.0,
                "within_tol": self.outside == 0}


def raw_output_agreement(workload: Workload, test_model: Any, ref_model: Any,
                         batches: Iterable[Any], device: torch.device, test_label: str,
                         ref_label: str, output_names: list[str] | None = None) -> dict[str, Any]:
    """Compare two models batch by batch: each raw output tensor, and the decoded predictions."""
    diffs: list[_Diff] = []
    differ = total = n_batches = 0
    with torch.no_grad():
        for batch in batches:
            batch = to_device(batch, device)
            rec_t, rec_r = CallRecorder(test_model), CallRecorder(ref_model)
            preds_t = predict_batch(workload, rec_t, batch)
            preds_r = predict_batch(workload, rec_r, batch)
            outs_t = [t for call in rec_t.calls for t in _flat_tensors(call[2])]
            outs_r = [t for call in rec_r.calls for t in _flat_tensors(call[2])]
            if len(outs_t) != len(outs_r):
                raise ValueError(f"{test_label} returned {len(outs_t)} output tensors, "
                                 f"{ref_label} {len(outs_r)}")
            if not diffs:
                names = output_names if output_names and len(output_names) == len(outs_r) else [
                    f"output_{i}" for i in range(len(outs_r))]
                diffs = [_Diff(n) for n in names]
            for d, t, r in zip(diffs, outs_t, outs_r):
                d.add(t, r)
            differ += sum(not same_prediction(a, b) for a, b in zip(preds_t, preds_r))
            total += len(preds_r)
            n_batches += 1
    outputs = [d.summary() for d in diffs]
    return {
        "test": test_label, "reference": ref_label, "batches": n_batches,
        "rtol": RAW_RTOL, "atol": RAW_ATOL,
        "outputs": outputs,
        "max_abs_diff": max((o["max_abs_diff"] for o in outputs), default=None),
        "max_rel_diff": max((o["max_rel_diff"] for o in outputs), default=None),
        "within_tol": all(o["within_tol"] for o in outputs),
        "decoded": {"samples": total, "differ": differ,
                    "fraction_differ": differ / total if total else 0.0,
                    "rtol": DECODED_RTOL, "atol": DECODED_ATOL},
    }
