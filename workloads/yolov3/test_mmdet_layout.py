"""mmdetection's YOLOv3 state dict (mmdet_yolov3_d53_manifest.txt, written by
make_mmdet_manifest.py from mmdet 3.3.0's own model) against `mmdet_yolov3_key` and YOLOv3.

The default test needs no mmdet: it rebuilds a state dict of random tensors from the
manifest's names and shapes. The `original` test builds mmdet's model itself (skipped unless
mmdet is importable, e.g. PYTHONPATH=/work/mmdet_pkgs) and compares the raw head outputs.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.start_weights import load_model_weights, read_manifest, read_state_dict
from workloads.yolov3.model import YOLOv3
from workloads.yolov3.weights import MMDET_YOLOV3, mmdet_yolov3_key

MANIFEST = Path(__file__).with_name("mmdet_yolov3_d53_manifest.txt")
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _manifest() -> list[tuple[str, tuple[int, ...]]]:
    return read_manifest(MANIFEST)[""]


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A value of the kind mmdet's checkpoint holds there, scaled so 75 conv layers stay finite."""
    leaf = name.rsplit(".", 1)[1]
    if leaf == "num_batches_tracked":
        return torch.randint(0, 10_000, shape, generator=gen, dtype=torch.int64)
    if leaf == "running_var" or (leaf == "weight" and len(shape) == 1):  # BN scale
        return torch.rand(shape, generator=gen) + 0.5
    if leaf == "weight":  # conv kernel
        fan_in = shape[1] * shape[2] * shape[3]
        return torch.randn(shape, generator=gen) * (1.0 / fan_in) ** 0.5
    return torch.randn(shape, generator=gen) * 0.1  # biases, running_mean


def _by_structure(mmdet_keys: list[str], own_keys: list[str]) -> dict[str, str]:
    """mmdet key -> our key by module order alone, independent of mmdet_yolov3_key's regexes:
    both state dicts list the backbone and head modules in the same order; mmdet's neck
    registers conv1 between detect1 and detect2 (detect1, conv1, detect2, conv2, detect3)
    where ours lists the three detection blocks before the two laterals."""
    def rank(key: str) -> int:
        if key.startswith("neck.detect"):
            return 1
        if key.startswith("neck.conv"):
            return 2
        return 0 if key.startswith("backbone.") else 3
    assert len(mmdet_keys) == len(own_keys)
    return dict(zip(sorted(mmdet_keys, key=rank), own_keys))  # sorted() is stable


def test_manifest_maps_onto_yolov3_and_loads(tmp_path: Path) -> None:
    rows = _manifest()
    assert len(rows) == 438
    params = sum(torch.Size(shape).numel() for name, shape in rows
                 if not name.endswith(_BN_BUFFERS))
    assert params == 61_949_149

    gen = torch.Generator().manual_seed(0)
    sd = {name: _random_tensor(name, shape, gen) for name, shape in rows}
    torch.manual_seed(0)
    model = YOLOv3(80, 416).eval()
    own = model.state_dict()
    mapped = {mmdet_yolov3_key(k): k for k in sd}
    assert None not in mapped and len(mapped) == len(sd)  # every tensor kept, no two collide
    assert set(mapped) == set(own)
    bad = [(k, tuple(sd[mapped[k]].shape), tuple(own[k].shape)) for k in own
           if sd[mapped[k]].shape != own[k].shape or sd[mapped[k]].dtype != own[k].dtype]
    assert not bad
    # The regexes agree with the plain module-order alignment, key by key.
    assert {v: k for k, v in mapped.items()} == _by_structure(list(sd), list(own))

    path = tmp_path / "mmdet_yolov3.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0", "CLASSES": "coco"}, "state_dict": sd}, path)
    assert load_model_weights(model, read_state_dict(path, "x"), path, (MMDET_YOLOV3,)) \
        == "mmdet-yolov3"

    by_hand = YOLOv3(80, 416).eval()
    targets = dict(by_hand.named_parameters()) | dict(by_hand.named_buffers())
    with torch.no_grad():
        for mmdet_key, own_key in _by_structure(list(sd), list(own)).items():
            targets[own_key].copy_(sd[mmdet_key])
    for k, v in by_hand.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k

    x = torch.rand(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        got, want = model(x), by_hand(x)
    assert [tuple(o.shape) for o in got] == [(1, 255, 2, 2), (1, 255, 4, 4), (1, 255, 8, 8)]
    for g, w in zip(got, want):
        assert torch.isfinite(g).all() and g.abs().max() > 0
        assert torch.equal(g, w)


@pytest.mark.original
def test_mmdet_yolov3_outputs_equal_ours() -> None:
    pytest.importorskip("mmdet", reason="mmdet is not importable (PYTHONPATH=<its dir>)")
    from workloads.yolov3.make_mmdet_manifest import build_mmdet_yolov3

    torch.manual_seed(0)
    ref = build_mmdet_yolov3(80).eval()
    # The manifest is mmdet's state dict as this mmdet builds it.
    assert [(k, tuple(v.shape)) for k, v in ref.state_dict().items()] == _manifest()
    # PyTorch's default init leaves BN as identity; make the BN tensors count too.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if name.endswith(("bn.weight", "running_var")):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("bn.bias", "running_mean")):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)

    ours = YOLOv3(80, 416).eval()
    assert load_model_weights(ours, ref.state_dict(), Path("mmdet"), (MMDET_YOLOV3,)) \
        == "mmdet-yolov3"

    x = torch.rand(1, 3, 320, 320, generator=gen)
    with torch.no_grad():
        want = ref._forward(x)
        got = ours(x)
    if len(want) == 1 and isinstance(want[0], (tuple, list)):  # YOLOV3Head returns (maps,)
        want = want[0]
    assert [tuple(w.shape) for w in want] == [tuple(g.shape) for g in got] \
        == [(1, 255, 10, 10), (1, 255, 20, 20), (1, 255, 40, 40)]
    for g, w in zip(got, want):
        assert torch.isfinite(w).all() and w.abs().max() > 0
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def _mmdet_file(path: Path, num_classes: int, input_size: int) -> None:
    """A checkpoint as mmdetection writes it ({"meta", "state_dict"} under its own names),
    holding a YOLOv3's random weights; the names come from the manifest through the map."""
    own_to_mmdet = {mmdet_yolov3_key(name): name for name, _ in _manifest()}
    torch.manual_seed(5)
    model = YOLOv3(num_classes, input_size)
    state = {own_to_mmdet[k]: v for k, v in model.state_dict().items()}
    torch.save({"meta": {"mmdet_version": "3.3.0", "epoch": 273}, "state_dict": state}, path)


@pytest.mark.slow  # ~1 min: the full 62M-parameter model evaluated twice (cpu, emulated npu)
def test_harness_eval_reads_a_checkpoint_in_mmdetections_layout(tmp_path: Path) -> None:
    """`harness eval yolov3 --scale full --checkpoint <mmdet file>` on cpu and on the emulated
    npu: the layout is detected and named in the record; a smoke build names the keys."""
    import json
    import os
    import subprocess
    import sys

    from harness.errors import UsageError
    from harness.evaluation import EvalConfig, run_eval
    from workloads.datasets.coco import SyntheticSpec, write_synthetic_coco

    pytest.importorskip("pycocotools")
    root = write_synthetic_coco(tmp_path / "data", SyntheticSpec(
        num_classes=80, train_images=2, val_images=3, min_side=64, max_side=128, seed=4))
    ckpt = tmp_path / "yolov3_d53_mmdet.pth"
    _mmdet_file(ckpt, 80, 320)
    common = dict(workload="yolov3", checkpoint=ckpt, data=root, cache_dir=tmp_path / "c",
                  overrides=("input_size=320",), batch_size=3, num_workers=0)
    cpu = run_eval(EvalConfig(scale="full", out=tmp_path / "cpu", **common))  # type: ignore[arg-type]
    assert cpu.status == "ok", cpu.error
    assert cpu.checkpoint is not None and cpu.checkpoint["names"] == "mmdet-yolov3"
    assert {"AP", "AP50"} <= set(cpu.metrics)
    root_dir = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "eval", "yolov3", "--scale", "full", "--checkpoint",
         str(ckpt), "--data", str(root), "--set", "input_size=320", "--batch-size", "3",
         "--workers", "0", "--backend", "npu", "--emulate", "--out", str(tmp_path / "npu"),
         "--cache-dir", str(tmp_path / "c")], cwd=root_dir, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(root_dir)}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    npu = json.loads((tmp_path / "npu" / "record.json").read_text())
    assert npu["checkpoint"]["names"] == "mmdet-yolov3" and npu["emulated"]
    assert npu["metrics"]["AP"] == pytest.approx(cpu.metrics["AP"], abs=1e-3)
    # Without --scale the smoke preset is built: one line naming the keys and the way out.
    with pytest.raises(UsageError, match=r"closest layout mmdet-yolov3.*needs --scale full"):
        run_eval(EvalConfig(out=tmp_path / "smoke", **common))  # type: ignore[arg-type]
