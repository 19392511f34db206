"""lanes: GANet's C5 attention, LFA, auxiliary loss and augmentations (issue 22 item 3), and
`smoke` left as its reference rows were measured."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workloads.lane_multitask import augment
from workloads.lane_multitask.config import LanesConfig
from workloads.lane_multitask.ganet_neck import (
    C5Encoder,
    LanePointsConv,
    PositionAttention,
    sine_position_code,
)
from workloads.lane_multitask.loss import lfa_aux_loss, multitask_loss
from workloads.lane_multitask.model import LaneMultitaskNet
from workloads.lane_multitask.targets import lfa_lane_points


def _small_full(**kw: object) -> LanesConfig:
    """`full`'s GANet switches on smoke's widths and input (seconds on a CPU)."""
    full = LanesConfig.full()
    on = {f: getattr(full, f) for f in ("c5_attention", "lfa", "fpn_out_bn_relu", "augment")}
    return dataclasses.replace(LanesConfig.smoke(), **on, lfa_channels=32,
                               c5_attn_channels=(32, 32), **kw)


# -- smoke unchanged --

def test_smoke_model_is_the_one_its_reference_rows_measured() -> None:
    """Parameter count and a fixed-seed forward as before GANet's modules were added
    (figures printed by the same script at the parent commit abe351a)."""
    cfg = LanesConfig.smoke()
    assert (cfg.c5_attention, cfg.lfa, cfg.augment, cfg.fpn_out_bn_relu) == (False, False, False, True)
    torch.manual_seed(0)
    model = LaneMultitaskNet(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) == 370_183
    x = torch.rand(2, 3, 160, 400, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        out = model(x)
    expected = {"cpts_hm": -4350.498445987701, "kpts_hm": -4327.720222949982,
                "pts_offset": -267.5175950081448, "int_offset": -177.92372829134547,
                "drivable": -38965.27850338817}
    assert list(out) == list(expected)
    for name, total in expected.items():
        assert out[name].double().sum().item() == pytest.approx(total, rel=1e-5), name


# -- C5 attention --

def test_position_code_is_detrs_unnormalised_sine() -> None:
    pos = sine_position_code(64, 10, 25, torch.device("cpu"))
    assert pos.shape == (1, 64, 10, 25)
    rows = torch.arange(1, 11, dtype=torch.float32)[:, None].expand(10, 25)
    cols = torch.arange(1, 26, dtype=torch.float32)[None, :].expand(10, 25)
    f1 = 10000 ** (2 / 32)  # the second frequency pair of 32 channels per axis
    torch.testing.assert_close(pos[0, 0], rows.sin())
    torch.testing.assert_close(pos[0, 1], rows.cos())
    torch.testing.assert_close(pos[0, 2], (rows / f1).sin())
    torch.testing.assert_close(pos[0, 32], cols.sin())
    torch.testing.assert_close(pos[0, 35], (cols / f1).cos())


def test_attention_is_permutation_equivariant_and_starts_as_identity() -> None:
    torch.manual_seed(0)
    layer = PositionAttention(16, 16, ratio=4).eval()
    x = torch.randn(2, 16, 3, 5)
    assert torch.equal(layer.attend(x), x)  # gamma starts at 0: the residual only
    with torch.no_grad():
        layer.gamma.fill_(0.7)
    perm = torch.randperm(15)
    shuffled = x.flatten(2)[:, :, perm].view(2, 16, 3, 5)
    torch.testing.assert_close(layer.attend(shuffled).flatten(2), layer.attend(x).flatten(2)[:, :, perm])
    # zero query/key: every position attends uniformly, i.e. to the mean of the values
    with torch.no_grad():
        layer.query.weight.zero_(), layer.query.bias.zero_()
    mean_v = layer.value(x).flatten(2).mean(-1)[:, :, None, None]
    torch.testing.assert_close(layer.attend(x), 0.7 * mean_v.expand_as(x) + x)


def test_c5_encoder_shape_and_ganet_s_size() -> None:
    enc = C5Encoder(512, (64, 64), ratio=4)
    out = enc(torch.randn(2, 512, 10, 25))
    assert out.shape == (2, 64, 10, 25)
    # dcn_fpn.py:74-105 with cfg trans_cfg: 338,273 + 80,225
    assert sum(p.numel() for p in enc.parameters()) == 418_498


# -- LFA --

def test_lfa_shapes_and_ganet_s_size() -> None:
    lfa = LanePointsConv(64, 256, num_points=7)
    feat, points = lfa(torch.randn(1, 64, 6, 9))
    assert feat.shape == (1, 64, 6, 9) and points.shape == (1, 14, 6, 9)
    # lanepoints_conv.py:77-117 less the unused refine conv/out (7 * (16,384 + 130))
    assert sum(p.numel() for p in lfa.parameters()) == 3_034_460 - 115_598


def test_lfa_at_its_kernel_taps_is_a_plain_row_conv() -> None:
    """Points predicted at the kernel's own taps (0, j - 3): zero deformable offsets, so the
    LFA is a 1 x 7 convolution along the row; all points at the centre: a 1x1 convolution with
    the taps summed."""
    torch.manual_seed(0)
    lfa = LanePointsConv(8, 16, num_points=7)
    x = torch.randn(2, 8, 5, 11)
    with torch.no_grad():
        lfa.pts_out.weight.zero_()
        lfa.pts_out.bias.copy_(lfa.base_offset.flatten())
        feat, points = lfa(x)
        cls = lfa.cls_convs(x)
        torch.testing.assert_close(feat, F.relu(F.conv2d(cls, lfa.dcn_weight, padding=(0, 3))))
        lfa.pts_out.bias.zero_()
        feat, _ = lfa(x)
        torch.testing.assert_close(feat, F.relu(F.conv2d(cls, lfa.dcn_weight.sum(-1, keepdim=True))),
                                   rtol=1e-4, atol=1e-5)
    assert torch.equal(points.flatten(2).std(-1), torch.zeros(2, 14))  # constant: the bias


def test_lfa_points_reach_the_dcn_with_a_tenth_of_the_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 8, 5, 11)
    grads = []
    for mul in (1.0, 0.1):
        torch.manual_seed(1)
        lfa = LanePointsConv(8, 16, num_points=3, gradient_mul=mul)
        feat, _ = lfa(x)
        feat.sum().backward()
        assert lfa.pts_out.bias.grad is not None
        grads.append(lfa.pts_out.bias.grad.clone())
    torch.testing.assert_close(grads[1], 0.1 * grads[0])


# -- the auxiliary loss --

def test_aux_loss_against_a_hand_computation() -> None:
    """Brute-force matching (every permutation) and smooth L1 (beta 1/9) written out."""
    k, h, w = 3, 6, 7
    torch.manual_seed(3)
    points = torch.randn(1, 2 * k, h, w) * 1.5
    lane = [(1, 2), (2, 3), (4, 3)]  # (y, x) cells, top-down
    top_row = [(0, 5), (3, 5), (5, 6)]  # first cell at y = 0: not a valid lane for GANet
    lanes = torch.full((1, 3, 3, 2), -1.0)
    lanes[0, 0], lanes[0, 1] = torch.tensor(lane, dtype=torch.float32), torch.tensor(top_row, dtype=torch.float32)
    total = 0.0
    for y, x in lane:
        pred = [(y + points[0, 2 * i, y, x].item(), x + points[0, 2 * i + 1, y, x].item())
                for i in range(k)]
        best = min(itertools.permutations(range(3)), key=lambda perm: sum(
            (pred[i][0] - lane[perm[i]][0]) ** 2 + (pred[i][1] - lane[perm[i]][1]) ** 2
            for i in range(k)))
        for i in range(k):
            for d in range(2):
                diff = abs(pred[i][d] - lane[best[i]][d])
                total += 0.5 * diff * diff * 9 if diff < 1 / 9 else diff - 0.5 / 9
    expected = total / (1 * 3 * 3 * k * 2)  # mean over batch, lanes, cells, points, (y, x)
    assert lfa_aux_loss(points, lanes).item() == pytest.approx(expected, rel=1e-5)
    assert lfa_aux_loss(points, torch.full((1, 3, 3, 2), -1.0)).item() == 0.0


def test_lfa_lane_points_targets() -> None:
    lanes = [np.stack([np.linspace(100, 300, 30), np.linspace(319, 20, 30)], 1),
             np.stack([np.linspace(700, 790, 30), np.linspace(319, 100, 30)], 1)]
    t = lfa_lane_points(lanes, (40, 100), 8, samples=41, max_lanes=6)
    assert t.shape == (6, 41, 2) and t.dtype == np.float32
    assert (t[2:] == -1).all()
    assert np.array_equal(t[:2], np.round(t[:2]))  # integer cells
    assert (np.diff(t[0, :, 0]) >= 0).all()  # top-down
    assert t[0, 0, 0] == int(20 / 8) and t[0, -1, 0] == 39  # 319 / 8 = 39.9, clipped to 39
    assert t[:2, :, 1].max() <= 99 and t[:2].min() >= 0
    assert lfa_lane_points(lanes * 4, (40, 100), 8).shape == (6, 41, 2)  # first 6 kept


# -- the model with GANet's neck --

def test_full_neck_wiring_and_loss_terms() -> None:
    torch.manual_seed(0)
    cfg = _small_full()
    model = LaneMultitaskNet(cfg).train()
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, output: bool = False):  # a forward hook that returns None
        return lambda m, i, o: seen.__setitem__(name, o if output else i[0])

    model.neck.lfa.register_forward_hook(keep("lfa_in"))
    model.offset_head.register_forward_hook(keep("offset_in"))
    model.reg_head.register_forward_hook(keep("reg_in"))
    model.keypts_head.register_forward_hook(keep("kpts_in"))
    model.neck.out.register_forward_hook(keep("out_out", output=True))
    out = model(torch.rand(2, 3, 160, 400) * 255)
    assert out["lfa_points"].shape == (2, 14, 20, 50)
    # offset heads read the pre-LFA map (GANet's aux_feat), heatmaps the output conv's
    assert seen["offset_in"] is seen["lfa_in"] and seen["reg_in"] is seen["lfa_in"]
    assert seen["kpts_in"] is seen["out_out"]
    assert isinstance(model.neck.out, torch.nn.Conv2d)  # GANet's plain fpn_conv
    assert "lfa_points" not in model.eval()(torch.rand(1, 3, 160, 400))  # export: the 5 maps
    model.train()
    seen.clear()

    lanes = [np.stack([np.linspace(60 + 90 * i, 150 + 40 * i, 15), np.linspace(159, 30, 15)], 1)
             for i in range(3)]
    batch = {"gt_cpts_hm": torch.zeros(2, 1, 20, 50), "gt_kpts_hm": torch.zeros(2, 1, 20, 50),
             "int_offset": torch.rand(2, 2, 20, 50), "pts_offset": torch.rand(2, 2, 20, 50),
             "offset_mask": torch.ones(2, 1, 20, 50), "offset_mask_weight": torch.ones(2, 2, 20, 50),
             "drivable": torch.ones(2, 160, 400, dtype=torch.uint8),
             "lane_points": torch.from_numpy(np.stack([lfa_lane_points(lanes, (20, 50), 8)] * 2))}
    terms = multitask_loss(out, batch, cfg, None)
    assert list(terms) == ["0_focalloss", "1_focalloss", "2_regl1kploss", "3_regl1kploss",
                           "4_smoothl1loss", "seg_bceloss", "seg_diceloss"]
    aux = lfa_aux_loss(out["lfa_points"].float(), batch["lane_points"])
    assert terms["4_smoothl1loss"].item() == pytest.approx(0.2 * aux.item())
    sum(terms.values()).backward()
    assert model.neck.lfa.pts_out.weight.grad.abs().sum() > 0
    assert model.neck.c5_encoder.layers[0].pre[0].weight.grad.abs().sum() > 0


# -- augmentations --

def test_augmentation_probabilities_and_ranges() -> None:
    rng = np.random.default_rng(0)
    draws = [augment.sample_params(rng, 320, 800) for _ in range(4000)]

    def rate(field: str) -> float:
        return float(np.mean([getattr(d, field) is not None for d in draws]))

    assert rate("rgb_shift") + rate("hsv_shift") == pytest.approx(0.7, abs=0.03)
    assert rate("rgb_shift") == pytest.approx(0.35, abs=0.03)
    for field, p in (("jpeg_quality", 0.2), ("blur", 0.2), ("brightness", 0.6), ("ssr", 0.6),
                     ("crop", 0.6)):
        assert rate(field) == pytest.approx(p, abs=0.03), field
    assert {d.jpeg_quality for d in draws if d.jpeg_quality} == set(range(85, 96))
    assert max(abs(s) for d in draws if d.rgb_shift for s in d.rgb_shift) <= 10
    for d in draws:
        if d.ssr:
            angle, scale, dx, dy = d.ssr
            assert abs(angle) <= 10 and 0.8 <= scale <= 1.2 and abs(dx) <= 0.1 and abs(dy) <= 0.1
        if d.crop:
            x0, y0, cw, ch = d.crop
            assert 0 <= x0 and x0 + cw <= 800 and 0 <= y0 and y0 + ch <= 320
            assert 1.7 * 0.99 <= cw / ch <= 2.7 * 1.01 and 0.8 * 0.98 <= cw * ch / 256000 <= 1.0


def _lane_scene() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A dark frame with two 7-px bright lanes and a drivable region between them."""
    h, w = 320, 800
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.full((h, w, 3), 40, np.uint8)
    lanes, centres = [], []
    for x_top, x_bottom in ((360, 120), (440, 700)):
        cx = x_top + (x_bottom - x_top) * (yy - 60) / (h - 1 - 60)
        image[(np.abs(xx - cx) <= 3) & (yy >= 60)] = 250
        centres.append(cx)
        ys = np.arange(70, h - 5, 10.0)
        lanes.append(np.stack([x_top + (x_bottom - x_top) * (ys - 60) / (h - 1 - 60), ys], 1))
    mask = ((xx > centres[0] + 6) & (xx < centres[1] - 6) & (yy >= 60)).astype(np.uint8)
    return image, mask, lanes


@pytest.mark.parametrize("ssr,crop", [((8.0, 1.15, 0.07, -0.05), (40, 30, 700, 280)),
                                      ((-10.0, 0.8, -0.1, 0.1), None),
                                      (None, (0, 0, 800 - 120, 320 - 40))])
def test_affine_keeps_lane_points_on_the_lanes_and_the_mask_aligned(ssr: tuple | None,
                                                                     crop: tuple | None) -> None:
    image, mask, lanes = _lane_scene()
    out_img, out_mask, out_lanes = augment.apply(image, mask, lanes,
                                                 augment.AugParams(ssr=ssr, crop=crop))
    assert out_img.shape == image.shape and out_img.dtype == np.uint8
    assert out_mask.shape == mask.shape and set(np.unique(out_mask)) <= {0, 1}
    inside = 0
    for lane in out_lanes:
        for x, y in lane:
            xi, yi = int(round(x)), int(round(y))
            if 2 <= xi < 798 and 2 <= yi < 318:
                inside += 1
                assert out_img[yi, xi].min() > 200, (x, y)  # still on the bright lane
                assert out_mask[yi, xi] == 0  # the lane is the region's border, outside it
    assert inside > 20
    # points half-way between the lanes stay in the region
    for (x0, y0), (x1, y1) in zip(*lanes):
        mid = augment.transform_points(np.array([[(x0 + x1) / 2, (y0 + y1) / 2]]),
                                       _matrix(ssr, crop))[0]
        xi, yi = int(round(mid[0])), int(round(mid[1]))
        if 0 <= xi < 800 and 0 <= yi < 320 and abs(x1 - x0) > 40:
            assert out_mask[yi, xi] == 1


def _matrix(ssr: tuple | None, crop: tuple | None) -> np.ndarray:
    m = np.eye(3)
    if ssr:
        m = augment.shift_scale_rotate_matrix(*ssr, 320, 800)
    if crop:
        m = augment.crop_resize_matrix(crop, 320, 800) @ m
    return m


def test_photometric_ops() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    assert np.array_equal(augment.rgb_shift(img, (0.0, 0.0, 0.0)), img)
    shifted = augment.rgb_shift(img, (10.0, -10.0, 0.0))
    assert np.array_equal(shifted[..., 0], np.clip(img[..., 0].astype(int) + 10, 0, 255))
    back = augment.hsv8_to_rgb(augment.rgb_to_hsv8(img))  # 8-bit HSV round trip: small error
    assert np.abs(back.astype(int) - img).max() <= 6
    grey = np.full((4, 4, 3), 128, np.uint8)
    assert np.array_equal(augment.hsv_shift(grey, (10.0, 0.0, 0.0)), grey)  # no hue to shift
    assert augment.brightness(grey, 0.2)[0, 0, 0] == 179  # 128 + 51
    assert augment.blur(grey, "box").shape == grey.shape
    smooth = (np.stack(np.broadcast_arrays(*np.ogrid[0:64, 0:64], 40), -1) * 3).astype(np.uint8)
    assert np.abs(augment.jpeg(smooth, 90).astype(int) - smooth).mean() < 3
    a = augment.ganet_augment(img, (img[..., 0] > 128).astype(np.uint8), [], np.random.default_rng(5))
    b = augment.ganet_augment(img, (img[..., 0] > 128).astype(np.uint8), [], np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # one seed, one result


def test_ganet_neck_exports_and_matches_onnxruntime(tmp_path) -> None:  # noqa: ANN001
    """The LFA's deformable conv is grid_sample (opset 16+): the model with GANet's neck exports
    and onnxruntime reproduces the five raw maps."""
    ort = pytest.importorskip("onnxruntime")
    from harness.export import export_onnx
    from workloads.lane_multitask import LanesWorkload

    torch.manual_seed(0)
    w = LanesWorkload(_small_full())
    model = w.build_model().eval()
    with torch.no_grad():  # points away from the taps, attention switched on
        model.neck.lfa.pts_out.bias.normal_(0, 2)
        for layer in model.neck.c5_encoder.layers:
            layer.gamma.fill_(0.5)
    x = torch.rand(2, 3, 160, 400) * 255
    with torch.no_grad():
        out = model(x)
    info = export_onnx(w, model, (x,), out, tmp_path / "lanes.onnx")
    got = ort.InferenceSession(info["path"]).run(None, {"input_0": x.numpy()})
    assert [n.split(".")[-1] for n in info["outputs"]] == list(out)
    for name, value in zip(out, got):
        np.testing.assert_allclose(value, out[name].numpy(), rtol=1e-3, atol=2e-5, err_msg=name)
