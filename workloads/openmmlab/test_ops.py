"""The portable mmcv ops against independent references: brute-force NMS in Python, shapely
polygons for rotated IoU, nn.Conv2d for deformable convolution with trivial offsets; the
kernel registry with a fake backend kernel; the placeholders."""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workloads.openmmlab import kernels, ops
from workloads.openmmlab.ops_catalog import CATALOG

shapely_geometry = pytest.importorskip("shapely.geometry")


@pytest.fixture(autouse=True)
def _no_kernels() -> Any:
    kernels.clear_kernels()
    yield
    kernels.clear_kernels()


# ------------------------------------------------------------------------------ references
def ref_iou(a: list[float], b: list[float], offset: int = 0) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0]) + offset
    h = min(a[3], b[3]) - max(a[1], b[1]) + offset
    inter = max(w, 0) * max(h, 0)
    area = [(x[2] - x[0] + offset) * (x[3] - x[1] + offset) for x in (a, b)]
    return inter / (area[0] + area[1] - inter)


def ref_nms(boxes: list[list[float]], scores: list[float], thr: float, offset: int = 0,
            iou: Any = ref_iou) -> list[int]:
    """Greedy NMS, one pair at a time; equal scores: lower index first."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(iou(boxes[k], boxes[i], offset) <= thr for k in kept):
            kept.append(i)
    return kept


def ref_batched(boxes: list[list[float]], scores: list[float], labels: list[int],
                thr: float) -> list[int]:
    kept = []
    for cls in set(labels):
        members = [i for i in range(len(labels)) if labels[i] == cls]
        kept += [members[k] for k in ref_nms([boxes[i] for i in members],
                                             [scores[i] for i in members], thr)]
    return sorted(kept, key=lambda i: (-scores[i], i))


def random_boxes(n: int, seed: int, spread: float = 60.0, low: float = 0.0,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * spread + low
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30 + 1
    # Scores on a coarse grid: many exact ties.
    scores = (torch.rand(n, generator=g, dtype=torch.float64) * 8).floor() / 8
    return torch.cat((xy, xy + wh), 1).to(dtype), scores.to(dtype)


# ------------------------------------------------------------------------------------ nms
@pytest.mark.parametrize("seed, thr, offset", [(0, 0.5, 0), (1, 0.3, 0), (2, 0.7, 1),
                                               (3, 0.0, 0)])
def test_nms_equals_brute_force(seed: int, thr: float, offset: int) -> None:
    boxes, scores = random_boxes(120, seed)
    boxes = torch.cat((boxes, boxes[:5]))  # exact duplicates with equal scores
    scores = torch.cat((scores, scores[:5]))
    dets, keep = ops.nms(boxes, scores, thr, offset=offset)
    assert keep.tolist() == ref_nms(boxes.tolist(), scores.tolist(), thr, offset)
    assert dets.shape == (len(keep), 5) and keep.dtype == torch.long
    assert torch.equal(dets[:, :4], boxes[keep]) and torch.equal(dets[:, 4], scores[keep])


def test_nms_score_threshold_max_num_numpy_and_empty() -> None:
    boxes, scores = random_boxes(80, 4)
    full = ref_nms(boxes.tolist(), scores.tolist(), 0.5)
    _, keep = ops.nms(boxes, scores, 0.5, max_num=7)
    assert keep.tolist() == full[:7]
    _, keep = ops.nms(boxes, scores, 0.5, score_threshold=0.4)
    above = [i for i in range(80) if scores[i] > 0.4]
    expected = [above[k] for k in ref_nms([boxes[i].tolist() for i in above],
                                          [float(scores[i]) for i in above], 0.5)]
    assert keep.tolist() == expected
    dets_np, keep_np = ops.nms(boxes.numpy(), scores.numpy(), 0.5)
    assert isinstance(dets_np, np.ndarray) and keep_np.tolist() == full
    _, keep = ops.nms(boxes, scores, iou_thr=0.5)  # the old keyword
    assert keep.tolist() == full
    dets, keep = ops.nms(boxes[:0], scores[:0], 0.5)
    assert dets.shape == (0, 5) and keep.shape == (0,)
    with pytest.raises(ValueError, match="offset"):
        ops.nms(boxes, scores, 0.5, offset=2)


@pytest.mark.parametrize("low", [0.0, -500.0])  # negative coordinates still separate classes
def test_batched_nms_is_per_class_nms(low: float) -> None:
    boxes, scores = random_boxes(150, 5, low=low)
    labels = torch.randint(0, 4, (150,), generator=torch.Generator().manual_seed(5))
    cfg = {"type": "nms", "iou_threshold": 0.5}
    expected = ref_batched(boxes.tolist(), scores.tolist(), labels.tolist(), 0.5)
    dets, keep = ops.batched_nms(boxes, scores, labels, cfg)
    assert keep.tolist() == expected
    assert torch.equal(dets[:, :4], boxes[keep]) and torch.equal(dets[:, 4], scores[keep])
    # split_thr below the box count: one NMS per class in turn, the same result.
    _, split = ops.batched_nms(boxes, scores, labels, {**cfg, "split_thr": 10})
    assert split.tolist() == expected
    # max_num on both paths: the first max_num of the merged, score-sorted result.
    for extra in ({}, {"split_thr": 10}):
        dets, keep = ops.batched_nms(boxes, scores, labels, {**cfg, **extra, "max_num": 9})
        assert keep.tolist() == expected[:9] and dets.shape == (9, 5)
    # class_agnostic (argument or cfg key) is plain NMS; iou_thr is the old key.
    plain = ref_nms(boxes.tolist(), scores.tolist(), 0.5)
    assert ops.batched_nms(boxes, scores, labels, cfg, class_agnostic=True)[1].tolist() == plain
    assert ops.batched_nms(boxes, scores, labels, {"iou_thr": 0.5,
                                                   "class_agnostic": True})[1].tolist() == plain


def test_batched_nms_without_cfg_empty_and_unknown_types() -> None:
    boxes, scores = random_boxes(20, 6)
    labels = torch.zeros(20, dtype=torch.long)
    dets, keep = ops.batched_nms(boxes, scores, labels, None)
    assert keep.tolist() == sorted(range(20), key=lambda i: (-float(scores[i]), i))
    assert torch.equal(dets[:, 4], scores[keep])
    dets, keep = ops.batched_nms(boxes[:0], scores[:0], labels[:0], {"iou_threshold": 0.5})
    assert dets.shape == (0, 5) and keep.numel() == 0
    with pytest.raises(ValueError, match="unknown nms type"):
        ops.batched_nms(boxes, scores, labels, {"type": "fancy_nms", "iou_threshold": 0.5})
    with pytest.raises(NotImplementedError, match="soft_nms"):
        ops.batched_nms(boxes, scores, labels, {"type": "soft_nms", "iou_threshold": 0.5})


# ---------------------------------------------------------------------------- rotated IoU
def polygon(box: list[float], clockwise: bool = True) -> Any:
    cx, cy, w, h, a = box
    a = a if clockwise else -a
    pts = [(cx + dx * math.cos(a) - dy * math.sin(a), cy + dx * math.sin(a) + dy * math.cos(a))
           for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]
    return shapely_geometry.Polygon(pts)


def shapely_iou(a: list[float], b: list[float], mode: str = "iou",
                clockwise: bool = True) -> float:
    pa, pb = polygon(a, clockwise), polygon(b, clockwise)
    inter = pa.intersection(pb).area
    return inter / (pa.area if mode == "iof" else pa.area + pb.area - inter)


def random_rotated(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g, dtype=torch.float64) * 20
    size = torch.rand(n, 2, generator=g, dtype=torch.float64) * 12 + 0.5
    angle = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
    return torch.cat((centre, size, angle), 1).to(dtype)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_box_iou_rotated_equals_shapely(dtype: torch.dtype, tol: float) -> None:
    a, b = random_rotated(40, 0, dtype), random_rotated(30, 1, dtype)
    ious = ops.box_iou_rotated(a, b)
    assert ious.shape == (40, 30) and ious.dtype == dtype
    expected = torch.tensor([[shapely_iou(x, y) for y in b.tolist()] for x in a.tolist()],
                            dtype=torch.float64)
    assert (expected > 0).sum() > 100  # the sample overlaps a lot
    torch.testing.assert_close(ious.double(), expected, atol=tol, rtol=0)
    iof = ops.box_iou_rotated(a, b, mode="iof")
    expected_iof = torch.tensor([[shapely_iou(x, y, "iof") for y in b.tolist()]
                                 for x in a.tolist()], dtype=torch.float64)
    torch.testing.assert_close(iof.double(), expected_iof, atol=tol, rtol=0)
    aligned = ops.box_iou_rotated(a[:30], b, aligned=True)
    torch.testing.assert_close(aligned.double(), expected.diagonal(), atol=tol, rtol=0)
    ccw = ops.box_iou_rotated(a, b, clockwise=False)
    expected_ccw = torch.tensor([[shapely_iou(x, y, clockwise=False) for y in b.tolist()]
                                 for x in a.tolist()], dtype=torch.float64)
    torch.testing.assert_close(ccw.double(), expected_ccw, atol=tol, rtol=0)


def test_box_iou_rotated_special_cases() -> None:
    from workloads.layers.nms import box_iou

    # Axis-aligned (angle 0, also a quarter turn with w and h swapped) is ordinary IoU,
    # including touching edges, shared corners and boxes inside boxes.
    xyxy, _ = random_boxes(25, 7, spread=20, dtype=torch.float64)
    xyxy = torch.cat((xyxy, xyxy[:3], torch.tensor([[0., 0, 4, 4], [4., 0, 8, 4], [1., 1, 2, 2]],
                                                   dtype=torch.float64)))
    centre, size = (xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]
    flat = torch.cat((centre, size, torch.zeros(len(xyxy), 1, dtype=torch.float64)), 1)
    turned = torch.cat((centre, size.flip(1), torch.full((len(xyxy), 1), math.pi / 2,
                                                         dtype=torch.float64)), 1)
    expected = box_iou(xyxy, xyxy)
    torch.testing.assert_close(ops.box_iou_rotated(flat, flat), expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(ops.box_iou_rotated(flat, turned), expected, atol=1e-9, rtol=0)
    same = random_rotated(10, 8)
    torch.testing.assert_close(ops.box_iou_rotated(same, same, aligned=True),
                               torch.ones(10, dtype=torch.float64), atol=1e-9, rtol=0)
    far = same + torch.tensor([1000.0, 0, 0, 0, 0], dtype=torch.float64)
    assert ops.box_iou_rotated(same, far).abs().max() == 0
    assert ops.box_iou_rotated(same[:0], same).shape == (0, 10)


def test_nms_rotated_equals_brute_force() -> None:
    boxes = random_rotated(60, 9)
    scores = (torch.rand(60, generator=torch.Generator().manual_seed(9)) * 6).floor().double()
    labels = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(10))

    def iou(a: list[float], b: list[float], _: int) -> float:
        return shapely_iou(a, b)

    dets, keep = ops.nms_rotated(boxes, scores, 0.3)
    assert keep is not None and keep.tolist() == ref_nms(boxes.tolist(), scores.tolist(), 0.3, iou=iou)
    assert dets.shape == (len(keep), 6) and torch.equal(dets[:, 5], scores[keep])
    _, keep = ops.nms_rotated(boxes, scores, 0.3, labels=labels)
    assert keep is not None
    per_class = []
    for cls in range(3):
        members = [j for j in range(60) if labels[j] == cls]
        per_class += [members[k] for k in ref_nms([boxes[j].tolist() for j in members],
                                                  [float(scores[j]) for j in members], 0.3,
                                                  iou=iou)]
    per_class.sort(key=lambda i: (-float(scores[i]), i))
    assert keep.tolist() == per_class
    # Class-wise through batched_nms (centre offsets), as rotated detectors call it.
    _, keep = ops.batched_nms(boxes, scores, labels, {"type": "nms_rotated",
                                                      "iou_threshold": 0.3})
    assert keep.tolist() == per_class
    empty, none = ops.nms_rotated(boxes[:0], scores[:0], 0.3)
    assert empty.shape == (0, 5) and none is None  # mmcv's convention


# ------------------------------------------------------------------------------------ DCN
DCN_CASES = [
    # in, out, kernel, stride, padding, dilation, groups, deform_groups
    (4, 6, 3, 1, 1, 1, 1, 1),
    (4, 6, 3, 2, 1, 1, 2, 2),
    (6, 4, (3, 1), 1, (2, 0), 2, 1, 3),
    (8, 8, 1, 1, 0, 1, 4, 1),
]


@pytest.mark.parametrize("cin, cout, k, stride, pad, dil, groups, dgroups", DCN_CASES)
def test_dcn_with_zero_offsets_and_unit_mask_is_a_convolution(
        cin: int, cout: int, k: Any, stride: int, pad: Any, dil: int, groups: int,
        dgroups: int) -> None:
    torch.manual_seed(0)
    layer = ops.ModulatedDeformConv2d(cin, cout, k, stride, pad, dil, groups, dgroups)
    assert layer.bias is not None
    x = torch.randn(2, cin, 9, 11)
    with torch.no_grad():
        layer.bias.normal_()
        conv = F.conv2d(x, layer.weight, layer.bias, stride, pad, dil, groups)
        kk = layer.kernel_size[0] * layer.kernel_size[1]
        offset = torch.zeros(2, 2 * dgroups * kk, *conv.shape[2:])
        mask = torch.ones(2, dgroups * kk, *conv.shape[2:])
        torch.testing.assert_close(layer(x, offset, mask), conv, atol=1e-5, rtol=1e-5)
        half = layer(x, offset, mask / 2) - layer.bias.view(1, -1, 1, 1) / 2
        torch.testing.assert_close(half, conv / 2, atol=1e-5, rtol=1e-5)
        v1 = ops.DeformConv2d(cin, cout, k, stride, pad, dil, groups, dgroups)
        v1.weight.copy_(layer.weight)
        torch.testing.assert_close(v1(x, offset), F.conv2d(x, layer.weight, None, stride, pad,
                                                           dil, groups), atol=1e-5, rtol=1e-5)


def test_an_integer_offset_is_a_shifted_convolution() -> None:
    torch.manual_seed(1)
    layer = ops.ModulatedDeformConv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 8, 10)
    offset = torch.zeros(1, 18, 8, 10)
    offset[:, 0::2] = 1.0   # every tap one row down (dy)
    offset[:, 1::2] = -2.0  # and two columns left (dx)
    # Sampling reads x at (y + 1, x - 2) also where the output's tap lies in the padding, so
    # the reference is an unpadded convolution over the shifted plane one pixel wider on
    # every side: ext[i, j] = x[i - 1 + 1, j - 1 - 2], zero outside x.
    ext = torch.zeros(1, 3, 10, 12)
    ext[:, :, :8, 3:] = x[:, :, :, :9]
    with torch.no_grad():
        out = layer(x, offset, torch.ones(1, 9, 8, 10))
        torch.testing.assert_close(out, F.conv2d(ext, layer.weight), atol=1e-5, rtol=1e-5)
        # Per deformable group: channels 2-3 (group 1) one row down, channels 0-1 not moved.
        two = ops.ModulatedDeformConv2d(4, 2, 3, padding=1, deform_groups=2, bias=False)
        x4 = torch.randn(1, 4, 8, 10)
        off = torch.zeros(1, 36, 8, 10)
        off[:, 18::2] = 1.0
        ext4 = F.pad(x4, (1, 1, 1, 1))
        ext4[:, 2:] = 0
        ext4[:, 2:, :8, 1:11] = x4[:, 2:]
        torch.testing.assert_close(two(x4, off, torch.ones(1, 18, 8, 10)),
                                   F.conv2d(ext4, two.weight), atol=1e-5, rtol=1e-5)


def test_dcn_gradients_flow_everywhere() -> None:
    torch.manual_seed(2)
    layer = ops.ModulatedDeformConv2d(2, 3, 3, padding=1, deform_groups=2).double()
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    # Offsets away from integers: bilinear sampling is smooth there.
    offset = (torch.rand(1, 36, 5, 6, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    mask = torch.rand(1, 18, 5, 6, dtype=torch.float64, requires_grad=True)
    layer(x, offset, mask).square().sum().backward()
    assert layer.bias is not None
    for grad in (x.grad, offset.grad, mask.grad, layer.weight.grad, layer.bias.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # gradcheck on a tiny case (2x2 kernel, two deformable groups): every input at once.
    tiny = (torch.randn(1, 2, 3, 3, dtype=torch.float64), torch.rand(1, 16, 2, 2,
            dtype=torch.float64) * 0.8 + 0.1, torch.rand(1, 8, 2, 2, dtype=torch.float64),
            torch.randn(1, 2, 2, 2, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda a, o, m, w: ops.modulated_deform_conv2d(a, o, m, w, None, 1, 0, 1, 1, 2),
        tuple(t.requires_grad_() for t in tiny))


def test_pack_variants_have_mmcvs_parameters_and_start_as_convolutions() -> None:
    torch.manual_seed(3)
    v2 = ops.ModulatedDeformConv2dPack(4, 8, 3, padding=1, deform_groups=2)
    shapes = {k: tuple(v.shape) for k, v in v2.state_dict().items()}
    assert shapes == {"weight": (8, 4, 3, 3), "bias": (8,),
                      "conv_offset.weight": (54, 4, 3, 3), "conv_offset.bias": (54,)}
    assert v2._version == 2 and v2.conv_offset.weight.abs().sum() == 0 and v2.bias is not None
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        v2.bias.normal_()
        # offsets 0 and mask sigmoid(0) = 1/2: half the convolution, plus the bias.
        expected = F.conv2d(x, v2.weight, None, padding=1) / 2 + v2.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(v2(x), expected, atol=1e-5, rtol=1e-5)
        v1 = ops.DeformConv2dPack(4, 8, 3, padding=1, deformable_groups=2)  # the old keyword
        assert set(v1.state_dict()) == {"weight", "conv_offset.weight", "conv_offset.bias"}
        assert v1.conv_offset.weight.shape == (36, 4, 3, 3) and v1.deform_groups == 2
        torch.testing.assert_close(v1(x), F.conv2d(x, v1.weight, None, padding=1),
                                   atol=1e-5, rtol=1e-5)
    # A Pack's state dict loads into a fresh one strictly (the checkpoint round trip).
    ops.ModulatedDeformConv2dPack(4, 8, 3, padding=1, deform_groups=2).load_state_dict(
        v2.state_dict())
    no_bias = ops.ModulatedDeformConv2dPack(4, 8, 3, bias=False)
    assert no_bias.bias is None and "bias" not in no_bias.state_dict()
    with pytest.raises(ValueError, match="bias"):
        ops.DeformConv2d(4, 8, 3, bias=True)
    with pytest.raises(ValueError, match="deform_groups"):
        ops.ModulatedDeformConv2d(4, 8, 3, deform_groups=3)


# ------------------------------------------------------------------------- small ops
def test_sigmoid_focal_loss_matches_its_definition() -> None:
    torch.manual_seed(4)
    logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2, 3, 1, 3, 0])  # 3 = background
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    p = logits.sigmoid()
    onehot = F.one_hot(target, 4)[:, :3].double()
    pt = p * onehot + (1 - p) * (1 - onehot)
    alpha = 0.25 * onehot + 0.75 * (1 - onehot)
    ref = -alpha * (1 - pt).pow(2) * pt.log()
    row = torch.tensor([1.0, 0.5, 1.0, 2.0, 1.0, 1.0], dtype=torch.float64)[:, None]
    torch.testing.assert_close(ops.sigmoid_focal_loss(logits, target, reduction="none"), ref)
    torch.testing.assert_close(ops.sigmoid_focal_loss(logits, target, 2.0, 0.25, weight, "sum"),
                               (ref * row).sum())
    loss = ops.sigmoid_focal_loss(logits, target)
    torch.testing.assert_close(loss, ref.sum() / 6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_point_sample_reads_pixel_centres() -> None:
    feats = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    ys, xs = torch.tensor([0, 3, 1]), torch.tensor([4, 0, 2])
    points = torch.stack(((xs + 0.5) / 5, (ys + 0.5) / 4), -1).expand(2, 3, 2)
    out = ops.point_sample(feats, points)
    assert out.shape == (2, 3, 3)
    torch.testing.assert_close(out, feats[:, :, ys, xs])
    assert ops.point_sample(feats, points.view(2, 3, 1, 2)).shape == (2, 3, 3, 1)


# ------------------------------------------------------------------ kernels, placeholders
def fake_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int,
             score_threshold: float, max_num: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.arange(min(2, len(scores)))
    return torch.cat((boxes[keep], scores[keep, None]), 1), keep


def test_a_registered_kernel_runs_and_is_reported() -> None:
    boxes, scores = random_boxes(10, 11)
    ops.box_iou_rotated(random_rotated(2, 0), random_rotated(2, 1))
    assert kernels.register_kernels({"nms": fake_nms}, "npu") == {
        "nms": f"npu:{__name__}"}
    _, keep = ops.nms(boxes, scores, 0.5)
    assert keep.tolist() == [0, 1]
    _, keep = ops.batched_nms(boxes, scores, torch.zeros(10, dtype=torch.long),
                              {"iou_threshold": 0.5})
    assert keep.tolist() == [0, 1]  # batched_nms goes through the nms kernel
    assert kernels.used_implementations() == {"box_iou_rotated": "portable",
                                              "nms": f"npu:{__name__}"}
    kernels.clear_kernels()
    _, keep = ops.nms(boxes, scores, 0.5)
    assert keep.tolist() == ref_nms(boxes.tolist(), scores.tolist(), 0.5)
    assert kernels.used_implementations() == {"nms": "portable"}
    with pytest.raises(ValueError, match="no portable op 'nmss'"):
        kernels.register_kernel("nmss", fake_nms, "npu:x")


def test_backend_kernels_come_from_the_hook() -> None:
    from harness import hookimpl
    from harness.plugins import get_plugin_manager

    class FakeAscendPlugin:
        @hookimpl
        def harness_op_kernels(self, backend: str) -> dict[str, Any] | None:
            return {"nms": fake_nms} if backend == "npu" else None

    pm = get_plugin_manager()
    plugin = FakeAscendPlugin()
    pm.register(plugin, name="fake-ascend-kernels")
    try:
        assert kernels.install_backend_kernels("cpu", pm.hook.harness_op_kernels(backend="cpu")) == {}
        offered = pm.hook.harness_op_kernels(backend="npu")
        assert kernels.install_backend_kernels("npu", offered) == {"nms": f"npu:{__name__}"}
    finally:
        pm.unregister(plugin)
    boxes, scores = random_boxes(5, 12)
    assert ops.nms(boxes, scores, 0.5)[1].tolist() == [0, 1]


def test_placeholders_fail_when_used_and_name_the_op() -> None:
    assert ops.RoIAlign.op_name == "RoIAlign" and "nms" in ops.PORTABLE
    with pytest.raises(NotImplementedError, match=r"mmcv\.ops\.roi_align "):
        ops.roi_align(torch.zeros(1), torch.zeros(1), (7, 7))
    with pytest.raises(NotImplementedError, match="MultiScaleDeformableAttention"):
        ops.MultiScaleDeformableAttention(embed_dims=32)

    class ModelLayer(ops.CARAFEPack):  # model code may subclass a placeholder
        pass

    with pytest.raises(NotImplementedError, match="CARAFEPack"):
        ModelLayer(4, 2)
    # Every catalogued name is in the namespace, each submodule's names included.
    assert all(name in ops.NAMESPACE for names in CATALOG.values() for name in names)
    assert len(ops.NAMESPACE) == len(set(itertools.chain(*CATALOG.values())))
