"""A CPU-emulated accelerator: PrivateUse1 renamed to "npu" or "hpu", plus vendor stand-ins.

For portability dry runs (`harness run W --backend npu --emulate`) and for tests of the npu/hpu
code paths without the hardware: the real backend module drives a real workload on a device
named "npu"/"hpu", and every op runs on the CPU through one boxed Python fallback.

What it does:
- tensors really live on the device: a stray `.cuda()` fails, and so does a CPU tensor (not a
  0-dim scalar) mixed into device math ("Expected all tensors to be on the same device");
- views, in-place and out= ops (with resize), cross-device copies, data-dependent shapes,
  autograd, optimizers, GradScaler, torch.manual_seed (ops draw from the CPU generator);
- autocast for the device type: a fallthrough for AutocastPrivateUse1 plus kernels that
  really cast (lower precision: linear/matmul/conv...; fp32: softmax, norms, losses);
- vendor stand-ins in sys.modules: torch_npu (npu device functions, npu.amp.GradScaler,
  npu.mstx) or habana_frameworks.torch (core.mark_step, which counts calls by caller,
  core.is_lazy, hpu device/memory functions, distributed.hccl), and "hpu_backend" for
  torch.compile (dynamo's eager backend).
What it cannot do: speed is the emulation's; memory counts live host buffers (approximate);
numerics are the CPU kernels'; no lazy graphs (mark_step only counts), HPU graphs, streams,
collectives (the hccl stand-in registers nothing), vendor-only ops (torch_npu.npu_*), or
inductor. CPU-fallback warnings come only for ops named in HARNESS_EMULATED_CPU_FALLBACK_OPS.
HARNESS_EMULATION_STATS=<path> writes the ops seen and the counters as JSON at exit.

How a device tensor holds data: its TensorImpl (PrivateUse1 keys) has a zero-byte storage; the
real bytes live in a CPU `UntypedStorage` kept as an attribute of that storage's Python object
(storages keep their Python object alive as long as they live, so the bytes die with the
storage). Views share the storage, so in-place ops through views reach the same bytes.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import warnings
import weakref
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_map

from backends.emulation_state import STATE as _state
from backends.emulation_state import STATS
from backends.emulation_state import device_name as _name
from harness.errors import UsageError

_HOST = "_harness_host_storage"
_COUNTED = "_harness_counted"
_META = torch._C.DispatchKeySet(torch._C.DispatchKey.Meta)
_AUTOCAST_KEY = torch._C.DispatchKey.AutocastPrivateUse1  # type: ignore[attr-defined]  # not in the stubs
STATS_ENV = "HARNESS_EMULATION_STATS"  # path: a JSON summary is written there at exit
FALLBACK_OPS_ENV = "HARNESS_EMULATED_CPU_FALLBACK_OPS"  # ops the emulated NPU "lacks"

# Ops where device tensors may meet CPU tensors on real devices too (copies, CPU indices).
_CPU_MIX_OK = re.compile(
    r"aten::(_copy_from|_copy_from_and_resize|copy_|index|index_put_|_index_put_impl_|set_|"
    r"_to_copy|lift_fresh)(\.|$)")


# ---------------------------------------------------------------- tensors <-> host bytes
def _is_dev(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == _name() and not x.is_meta


def _host_storage(t: torch.Tensor) -> torch.UntypedStorage:
    st = t.untyped_storage()
    host = getattr(st, _HOST, None)
    if host is None:
        raise RuntimeError(f"emulated {_name()}: a device tensor without host bytes (made by "
                           f"something other than this emulation's kernels)")
    return host


def to_host(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor aliasing the device tensor's bytes (same sizes, strides, offset)."""
    out = torch.empty(0, dtype=t.dtype)
    return out.set_(_host_storage(t), t.storage_offset(), t.size(), t.stride())


def _count(host: torch.UntypedStorage) -> None:
    if getattr(host, _COUNTED, False):
        return
    setattr(host, _COUNTED, True)
    mem, n = STATS["memory"], host.nbytes()
    mem["InUse"] += n
    mem["NumAllocs"] += 1
    mem["MaxInUse"] = max(mem["MaxInUse"], mem["InUse"])
    weakref.finalize(host, _free, n)


def _free(n: int) -> None:
    STATS["memory"]["InUse"] -= n
    STATS["memory"]["NumFrees"] += 1


def from_host(cpu: torch.Tensor) -> torch.Tensor:
    """A device tensor whose bytes are `cpu`'s storage (shared, not copied)."""
    base = torch._C._acc.create_empty_tensor((0,), cpu.dtype)
    host = cpu.untyped_storage()
    _count(host)
    setattr(base.untyped_storage(), _HOST, host)
    return _restride(base, cpu)


def _restride(dev: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # The Meta kernel of as_strided only builds a TensorImpl sharing dev's storage; it reads no data.
    return torch.ops.aten.as_strided.default.redispatch(
        _META, dev, like.size(), like.stride(), like.storage_offset())


def _reset_geometry(dev: torch.Tensor, like: torch.Tensor) -> None:
    """Give device tensor `dev` the sizes/strides/offset of its host view `like` (in place)."""
    if dev.size() == like.size() and dev.stride() == like.stride() \
            and dev.storage_offset() == like.storage_offset():
        return
    torch.ops.aten.set_.source_Storage_storage_offset.redispatch(
        _META, dev, dev.untyped_storage(), like.storage_offset(), like.size(), like.stride())


# ---------------------------------------------------------------- the boxed fallback
def _fallback(op: torch._ops.OpOverload, *args: Any, **kwargs: Any) -> Any:
    name = op.name()
    STATS["ops"][name] = STATS["ops"].get(name, 0) + 1
    _maybe_warn_cpu_fallback(name)
    special = _SPECIAL.get(name)
    if special is not None:
        return special(*args, **kwargs)
    return _run(op, op, args, kwargs)


def _run(op: torch._ops.OpOverload, host_op: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Run `host_op` on host views of the arguments; wrap results as `op`'s schema says."""
    flat, _ = tree_flatten((args, kwargs))
    targets_device = _check_devices(op.name(), flat) or _device_kwarg(kwargs)
    host_args, host_kwargs = tree_map(_unwrap, (args, kwargs))
    host_args = _rewrap_numbers(op, host_args)
    out = host_op(*host_args, **host_kwargs)
    if not targets_device:
        return out
    return _wrap_returns(op, args, kwargs, out)


def _rewrap_numbers(op: torch._ops.OpOverload, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Composite kernels pass scalars as "wrapped number" tensors, which reach Python as
    plain numbers; give Tensor parameters back a 0-dim tensor (default dtypes, like a
    wrapped number's promotion)."""
    schema = op._schema.arguments
    fixed = list(args)
    for i, value in enumerate(args):
        if isinstance(value, (bool, int, float)) and i < len(schema) \
                and isinstance(schema[i].type, torch.TensorType):
            dtype = torch.bool if isinstance(value, bool) else \
                torch.int64 if isinstance(value, int) else torch.get_default_dtype()
            fixed[i] = torch.tensor(value, dtype=dtype)
    return tuple(fixed)


def _device_kwarg(kwargs: dict[str, Any]) -> bool:
    dev = kwargs.get("device")
    if dev is not None and torch.device(dev).type in (_name(), "privateuseone"):
        kwargs["device"] = torch.device("cpu")
        return True
    return False


def _check_devices(name: str, flat: list[Any]) -> bool:
    on_device = False
    for x in flat:
        if not isinstance(x, torch.Tensor):
            continue
        kind = x.device.type
        if kind == _name():
            on_device = True
        elif kind not in ("cpu", "meta"):
            raise RuntimeError(
                f"emulated {_name()}: {name} got a tensor on {x.device}; workload code must not "
                f"hard-code a device (.cuda(), device='cuda') - use the device the harness gives")
    if on_device and not _CPU_MIX_OK.match(name):
        for x in flat:
            if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dim() > 0:
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least two "
                    f"devices, {_name()}:0 and cpu! (emulated {_name()}, op {name}: a CPU tensor "
                    f"of shape {tuple(x.shape)} was created without device=)")
    return on_device


def _unwrap(x: Any) -> Any:
    if _is_dev(x):
        return to_host(x)
    if isinstance(x, torch.device) and x.type in (_name(), "privateuseone"):
        return torch.device("cpu")
    return x


def _wrap_returns(op: torch._ops.OpOverload, args: Any, kwargs: Any, out: Any) -> Any:
    rets = op._schema.returns
    if not rets:
        return out
    outs = out if isinstance(out, tuple) else (out,)
    wrapped = []
    for ret, value in zip(rets, outs, strict=True):
        alias = ret.alias_info
        source = _aliased_arg(op, args, kwargs, alias) if alias is not None else None
        if source is not None and alias is not None and alias.is_write:
            # in-place / out=: the host view was mutated; the device arg may need new geometry
            if isinstance(value, torch.Tensor) and _is_dev(source):
                _reset_geometry(source, value)
            wrapped.append(source)
        elif source is not None and _is_dev(source) and isinstance(value, torch.Tensor) \
                and value.dtype == source.dtype:
            wrapped.append(_restride(source, value))  # a view: share the device storage
        else:
            wrapped.append(tree_map(_wrap_tensor, value))
    return tuple(wrapped) if isinstance(out, tuple) else wrapped[0]


def _wrap_tensor(x: Any) -> Any:
    return from_host(x) if isinstance(x, torch.Tensor) and x.device.type == "cpu" else x


def _aliased_arg(op: torch._ops.OpOverload, args: Any, kwargs: Any, alias: Any) -> Any:
    for i, arg in enumerate(op._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.before_set & alias.before_set:
            if arg.kwarg_only or i >= len(args):
                return kwargs.get(arg.name)
            return args[i]
    return None


def _copy_from(src: torch.Tensor, dst: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    (to_host(dst) if _is_dev(dst) else dst).copy_(to_host(src) if _is_dev(src) else src)
    return dst


def _copy_from_and_resize(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    if dst.shape != src.shape:
        dst.resize_(src.shape)
    return _copy_from(src, dst)


def _resize(dev: torch.Tensor, size: Any, memory_format: Any = None) -> torch.Tensor:
    host = to_host(dev)
    host.resize_(size, memory_format=memory_format)
    _reset_geometry(dev, host)
    return dev


def _as_strided_inplace(dev: torch.Tensor, size: Any, stride: Any,
                        storage_offset: Any = None) -> torch.Tensor:
    # The composite kernel checks the new geometry against the device storage, which holds no
    # bytes here (adaptive_avg_pool2d restrides its channels_last output this way); check it
    # against the host bytes instead.
    host = to_host(dev)
    host.as_strided_(size, stride, storage_offset)
    _reset_geometry(dev, host)
    return dev


# Composite kernels hand backends they do not know these "overrideable" hooks.
def _conv(*args: Any) -> Any:
    return _run(torch.ops.aten.convolution_overrideable.default,
                torch.ops.aten.convolution.default, args, {})


def _conv_backward(grad, inp, weight, stride, padding, dilation, transposed, out_pad, groups,
                   mask):  # type: ignore[no-untyped-def]
    out_channels = weight.shape[1] * groups if transposed else weight.shape[0]

    def host(g, i, w):  # type: ignore[no-untyped-def]
        return torch.ops.aten.convolution_backward.default(
            g, i, w, [out_channels], stride, padding, dilation, transposed, out_pad, groups, mask)
    return _run(torch.ops.aten.convolution_backward_overrideable.default, host,
                (grad, inp, weight), {})


_SPECIAL: dict[str, Callable[..., Any]] = {
    "aten::convolution_overrideable": _conv,
    "aten::convolution_backward_overrideable": _conv_backward,
    "aten::_copy_from": _copy_from,
    "aten::_copy_from_and_resize": _copy_from_and_resize,
    "aten::resize_": _resize,
    "aten::as_strided_": _as_strided_inplace,
    "aten::record_stream": lambda *a, **k: None,
}


def _maybe_warn_cpu_fallback(name: str) -> None:
    # torch_npu warns once per op it runs on the CPU; let tests exercise that path.
    if _name() != "npu":
        return
    wanted = {s.strip() for s in os.environ.get(FALLBACK_OPS_ENV, "").split(",") if s.strip()}
    warned = _state.setdefault("fallback_warned", set())
    if name in wanted and name not in warned:
        warned.add(name)
        warnings.warn(
            f"CAUTION: The operator '{name}' is not currently supported on the NPU backend and "
            f"will fall back to run on the CPU. This may have performance implications.",
            UserWarning, stacklevel=2)


# ---------------------------------------------------------------- autocast
_LOWER = ("linear", "mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "mv", "addmv",
          "conv1d", "conv2d", "conv3d", "conv1d.padding", "conv2d.padding", "conv3d.padding",
          "conv_transpose1d", "conv_transpose2d.input", "conv_transpose3d.input",
          "convolution", "_convolution", "prelu")
# mse_loss's composite kernel calls mse_loss.out, whose CPU kernel warns about resizing.
_DIRECT = ("mse_loss",)
_FP32 = ("softmax.int", "log_softmax.int", "layer_norm", "group_norm", "nll_loss",
         "cross_entropy_loss", "binary_cross_entropy_with_logits", "mse_loss", "smooth_l1_loss")


def _autocast_kernel(op_name: str, lower: bool) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        dtype = torch.get_autocast_dtype(_name()) if lower else torch.float32

        def cast(x: Any) -> Any:
            if _is_dev(x) and x.is_floating_point() and x.dtype != dtype and x.dtype != torch.float64:
                return x.to(dtype)
            return x

        STATS["autocast_casts"][op_name] = STATS["autocast_casts"].get(op_name, 0) + 1
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_AUTOCAST_KEY)):
            return _op(op_name)(*tree_map(cast, args), **tree_map(cast, kwargs))
    return kernel


def _op(qualified: str) -> torch._ops.OpOverload:
    base, _, overload = qualified.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


def _register_kernels() -> None:
    fallback = torch.library.Library("_", "IMPL")
    fallback.fallback(_fallback, "PrivateUse1")
    fallback.fallback(torch.library.fallthrough_kernel, "AutocastPrivateUse1")
    aten = torch.library.Library("aten", "IMPL")
    for op_name in _DIRECT:  # skip composite wrappers that would route through out= variants
        op = _op(op_name)
        aten.impl(op_name, lambda *a, _op=op, **k: _fallback(_op, *a, **k), "PrivateUse1")
    for qualified in _SPECIAL:  # direct kernels: some of these have (throwing) composite ones
        op = _op(qualified.removeprefix("aten::"))
        aten.impl(qualified.removeprefix("aten::"),
                  lambda *a, _op=op, **k: _fallback(_op, *a, **k), "PrivateUse1")
    for names, lower in ((_LOWER, True), (_FP32, False)):
        for op_name in names:
            aten.impl(op_name, _autocast_kernel(op_name, lower), "AutocastPrivateUse1")
    _state["libs"] += [fallback, aten]


# ---------------------------------------------------------------- install
def installed() -> str | None:
    return _state["name"]


def install(name: str) -> None:
    """Register the emulated device `name` ("npu" or "hpu") in this process. Idempotent."""
    if _state["name"] == name:
        return
    if _state["name"] is not None:
        raise UsageError(
            f"an emulated '{_state['name']}' device is already installed in this process; "
            f"PrivateUse1 takes one name per process, so '{name}' needs a new process")
    if name not in ("npu", "hpu"):
        raise UsageError(f"no emulated device '{name}' (choose npu or hpu)")
    current = torch._C._get_privateuse1_backend_name()
    if current != "privateuseone" or hasattr(torch, name):
        raise UsageError(
            f"cannot emulate '{name}': PrivateUse1 is already '{current}' or torch.{name} exists "
            f"(is the real vendor package imported?)")
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    from backends import emulated_vendor as vendor

    device_mod = vendor.device_module(name)
    _setup_privateuseone_for_python_backend(name, backend_module=device_mod)
    _state["name"] = name
    STATS["device"] = name
    _register_kernels()
    if name == "npu":
        vendor.install_torch_npu(device_mod)
    else:
        vendor.install_habana(device_mod)
    if os.environ.get(STATS_ENV):
        atexit.register(write_stats, os.environ[STATS_ENV])


def write_stats(path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(STATS, fh, indent=1, sort_keys=True)
