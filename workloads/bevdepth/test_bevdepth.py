"""BEVDepth / MatrixVT unit tests: matrices, targets, losses, decoding, layers, presets."""
from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F

from harness.config import apply_overrides
from workloads.bevdepth import BEVDepthWorkload, MatrixVTWorkload, harness_workloads
from workloads.bevdepth.config import TASKS, BEVDepthConfig
from workloads.bevdepth.head import BOX_HEADS, build_targets, task_offsets
from workloads.bevdepth.matrixvt import (
    MatrixVTViewTransform,
    matrix_project,
    prime_cells,
    ring_ray_matrices,
)
from workloads.bevdepth.postprocess import circle_nms, decode
from workloads.bevdepth.testing import camera_rig, random_batch
from workloads.bevdepth.view_transform import get_geometry, voxel_pooling
from workloads.layers.deform_conv import DeformConv2dPack, deform_conv2d
from workloads.layers.resnet import ResNet

SMOKE = BEVDepthConfig.smoke()


def _prime_pool(cells: torch.Tensor, depth: torch.Tensor, feat: torch.Tensor, nx: int, ny: int
                ) -> torch.Tensor:
    """Lift-splat on the prime (ray x ring) point cloud: voxel pooling of depth x feature."""
    xy = torch.stack([cells % nx, cells // nx, torch.zeros_like(cells)], -1)
    xy[cells == nx * ny] = -1  # outside
    return voxel_pooling(xy, depth.unsqueeze(-1) * feat.unsqueeze(2), (nx, ny, 1))


def test_ring_ray_matrices_equal_the_original_loop_construction():
    # The original fills the maps with `map[b, r, idx] += 1` per ray and per ring (a repeated
    # index adds once) and divides by the per-cell maximum; outside pairs go to index L here.
    b, rays, rings, num = 2, 7, 5, 12
    g = torch.Generator().manual_seed(3)
    cells = torch.randint(0, num + 1, (b, rays, rings), generator=g)
    ring_ref = torch.zeros(b, rings, num + 1)
    ray_ref = torch.zeros(b, rays, num + 1)
    for i in range(b):
        for r in range(rays):
            ray_ref[i, r, cells[i, r]] += 1
        for d in range(rings):
            ring_ref[i, d, cells[i, :, d]] += 1
    ring_ref, ray_ref = ring_ref[..., :num], ray_ref[..., :num]
    ring_ref /= ring_ref.amax(1, keepdim=True).clamp(min=1)
    ray_ref /= ray_ref.amax(1, keepdim=True).clamp(min=1)
    ring, ray = ring_ray_matrices(cells, num)
    assert torch.equal(ring, ring_ref) and torch.equal(ray, ray_ref)
    # the case where counting repeats would differ from the original must occur
    assert bool((cells.sort(-1).values.diff(dim=-1) == 0).any())


def test_matrix_projection_equals_lift_splat_when_factorisation_is_exact():
    # Each cell is hit by a full rectangle of (ray, ring) pairs: the ring/ray product is then
    # exactly the point-to-cell incidence, so both reductions must agree.
    nx, ny, rays, rings = 6, 5, 12, 9
    g = torch.Generator().manual_seed(0)
    ray_group = torch.randint(0, 4, (rays,), generator=g)
    ring_group = torch.randint(0, 3, (rings,), generator=g)
    cell_of_block = torch.randperm(nx * ny + 1, generator=g)[:12].view(4, 3)  # may hit "outside"
    cells = cell_of_block[ray_group[:, None], ring_group[None, :]].unsqueeze(0).repeat(2, 1, 1)
    depth = torch.rand(2, rays, rings, generator=g, dtype=torch.float64)
    feat = torch.randn(2, rays, 5, generator=g, dtype=torch.float64)
    ring, ray = ring_ray_matrices(cells, nx * ny)
    got = matrix_project(depth, feat, ring.double(), ray.double()).view(2, 5, ny, nx)
    assert torch.allclose(got, _prime_pool(cells, depth, feat, nx, ny))


def test_matrix_projection_equals_lift_splat_on_real_rig():
    cfg = SMOKE
    vt = MatrixVTViewTransform(cfg.image_size, cfg.downsample_factor, cfg.d_bound, cfg.x_bound,
                               cfg.y_bound, cfg.z_bound, 8, 8)
    mats = camera_rig(2, cfg.image_size)
    geom = get_geometry(vt.frustum, mats["sensor2ego_mats"], mats["intrin_mats"],
                        mats["ida_mats"], mats["bda_mat"])
    nx, ny = vt.grid.num[:2]
    cells = prime_cells(vt.grid, geom)
    ring, ray = ring_ray_matrices(cells, nx * ny)
    b, rays, rings = cells.shape
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(b, rays, rings, generator=g).softmax(-1)
    feat = torch.rand(b, rays, 4, generator=g)  # positive, so total mass is comparable
    got = matrix_project(depth, feat, ring, ray).view(b, 4, ny, nx)
    want = _prime_pool(cells, depth, feat, nx, ny)
    # Cells whose (ray, ring) incidence is a full rectangle are reproduced exactly; the rest
    # is MatrixVT's approximation. Find the exact ones from the incidence itself.
    inc = torch.zeros(rays, rings, nx * ny + 1)
    inc[torch.arange(rays)[:, None], torch.arange(rings)[None, :], cells[0]] = 1
    inc = inc[..., :-1]
    exact = ((ray[0][:, None, :] * ring[0][None, :, :] - inc).abs().amax((0, 1)) < 1e-6)
    hit = inc.sum((0, 1)) > 0
    mask = (exact & hit).view(ny, nx)
    assert mask.sum() > 0.7 * hit.sum()  # most cells of the smoke rig are exact
    assert torch.allclose(got[:, :, mask], want[:, :, mask], atol=1e-5)
    # Elsewhere the 0/1 Ring x Ray product covers every (ray, ring) -> cell incidence and may
    # add pairs, so the approximation only adds mass: 13-15% on this rig (seeds 0-4).
    ratio = float(got.sum() / want.sum())
    assert 1.0 <= ratio < 1.3, ratio


def test_matrixvt_matrices_are_cached_until_calibration_changes():
    cfg = SMOKE
    vt = MatrixVTViewTransform(cfg.image_size, cfg.downsample_factor, cfg.d_bound, cfg.x_bound,
                               cfg.y_bound, cfg.z_bound, cfg.context_channels, 16).eval()
    mats = camera_rig(2, cfg.image_size)
    h, w = cfg.image_size[0] // 16, cfg.image_size[1] // 16
    depth = torch.rand(12, cfg.num_depth_bins, h, w).softmax(1)
    ctx = torch.randn(12, cfg.context_channels, h, w)
    with torch.no_grad():
        first = vt(depth, ctx, mats)
        ring1, _ = vt.projection(mats)
        again = vt(depth, ctx, {k: v.clone() for k, v in mats.items()})  # equal values
        assert vt.builds == 1 and torch.equal(first, again)
        assert vt.projection(mats)[0] is ring1
        moved = dict(mats, ida_mats=mats["ida_mats"].clone())
        moved["ida_mats"][0, 1, 0, 3] += 8.0  # a crop shift on one camera
        vt(depth, ctx, moved)
        assert vt.builds == 2
        assert not torch.equal(vt.projection(moved)[0], ring1)


def test_target_heatmap_peaks_at_gt_cell():
    cfg = SMOKE
    boxes = torch.tensor([[10.3, -20.9, 0.5, 1.9, 4.5, 1.6, 0.3, 1.0, 0.0],
                          [-30.0, 40.1, 0.2, 0.6, 0.7, 1.7, -1.0, 0.0, 0.5],
                          [99.0, 0.0, 0.0, 2.0, 4.0, 1.5, 0.0, 0.0, 0.0]])  # outside the grid
    labels = torch.tensor([0, 8, 0])
    t = build_targets([boxes], [labels], cfg)
    nx, _ = cfg.bev_size
    for k, (task, cls) in enumerate([(0, 0), (5, 0)]):
        cx = int((boxes[k, 0] - cfg.x_bound[0]) / cfg.x_bound[2])
        cy = int((boxes[k, 1] - cfg.y_bound[0]) / cfg.y_bound[2])
        heat = t.heatmaps[task][0, cls]
        assert heat[cy, cx] == 1.0 and heat.max() == 1.0
        assert int(t.ind[k]) == cy * nx + cx
        assert t.weights[task][k].sum() > 0
        assert math.isclose(float(t.boxes[k, 0]), float((boxes[k, 0] - cfg.x_bound[0])
                                                         / cfg.x_bound[2] - cx), abs_tol=1e-5)
    assert all(w[2].sum() == 0 for w in t.weights)  # outside: ignored
    assert t.heatmaps[0][0, 0].eq(1).sum() == 1  # the outside car drew nothing
    assert [float(n) for n in t.num_objs] == [1, 0, 0, 0, 0, 1]


def _preds_from_targets(t, cfg: BEVDepthConfig, batch: int) -> list[dict[str, torch.Tensor]]:
    nx, ny = cfg.bev_size
    preds = []
    for task, heat in enumerate(t.heatmaps):
        logit = torch.where(heat.eq(1), torch.tensor(5.0), torch.tensor(-8.0))
        box = torch.zeros(batch, 10, ny * nx)
        member = t.weights[task][:, 0] > 0
        box[t.batch_idx[member], :, t.ind[member]] = t.boxes[member]
        box = box.view(batch, 10, ny, nx)
        split = torch.split(box, list(BOX_HEADS.values()), dim=1)
        preds.append({"heatmap": logit, **dict(zip(BOX_HEADS, split))})
    return preds


@pytest.mark.parametrize("nms_type", ["circle", "maxpool"])
def test_decode_round_trips_targets(nms_type: str):
    cfg = dataclasses.replace(SMOKE, nms_type=nms_type)
    g = torch.Generator().manual_seed(3)
    gts, labels = [], []
    for _ in range(2):  # well separated objects, one per 4x4-cell block
        n = 6
        cells = torch.randperm(64, generator=g)[:n]
        xy = torch.stack([(cells % 8) * 12.8 - 51.2 + 6.0, (cells // 8) * 12.8 - 51.2 + 6.0], 1)
        xy = xy + torch.rand(n, 2, generator=g) * 3
        rest = torch.cat([torch.rand(n, 1, generator=g), torch.rand(n, 3, generator=g) + 0.5,
                          torch.rand(n, 1, generator=g) * 6 - 3, torch.randn(n, 2, generator=g)], 1)
        gts.append(torch.cat([xy, rest], 1))
        labels.append(torch.randint(0, 10, (n,), generator=g))
    t = build_targets(gts, labels, cfg)
    out = decode(_preds_from_targets(t, cfg, 2), cfg)
    for gt, lab, pred in zip(gts, labels, out):
        assert pred["boxes"].shape == (len(gt), 9)
        order = torch.cdist(gt[:, :2], pred["boxes"][:, :2]).argmin(1)
        got = pred["boxes"][order]
        assert torch.equal(pred["labels"][order], lab)
        yaw_err = torch.atan2(torch.sin(got[:, 6] - gt[:, 6]), torch.cos(got[:, 6] - gt[:, 6]))
        assert yaw_err.abs().max() < 1e-4
        assert torch.allclose(got[:, [0, 1, 2, 3, 4, 5, 7, 8]], gt[:, [0, 1, 2, 3, 4, 5, 7, 8]],
                              atol=1e-4)


def test_circle_nms_suppresses_within_radius():
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.5, 0.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    keep = circle_nms(centers, scores, thresh=1.0, post_max_size=83)  # squared distance
    assert keep.tolist() == [3, 0]
    assert circle_nms(centers, scores, 1.0, post_max_size=1).tolist() == [3]


@pytest.mark.parametrize("workload", [BEVDepthWorkload, MatrixVTWorkload])
def test_loss_terms_present_and_finite(workload):
    torch.manual_seed(0)
    wl = workload(workload.presets()["smoke"])
    model = wl.build_model()
    batch = random_batch(wl.config, batch=2, objects=6)
    terms = wl.loss(model, batch)
    assert set(terms) == {"loss_heatmap", "loss_bbox", "loss_depth"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    model.eval()
    with torch.no_grad():
        preds = wl.predict(model, batch)
    assert [p["sample_token"] for p in preds] == ["fake0", "fake1"]
    assert all(p["boxes"].shape[1] == 9 and p["boxes"].device.type == "cpu" for p in preds)
    assert wl.samples(batch) == 2


def test_depth_loss_ignores_cells_without_lidar():
    from workloads.bevdepth.loss import depth_loss, downsample_depth_labels
    cfg = SMOKE
    labels = torch.zeros(1, 1, 32, 32)
    labels[0, 0, 3, 5] = 7.0  # bin int((7 - 0) / 2) = 3 -> index 2 after dropping bin 0
    labels[0, 0, 4, 6] = 9.0  # same patch, farther: the minimum wins
    labels[0, 0, 20, 20] = 70.0  # beyond d_max: no label
    onehot = downsample_depth_labels(labels, cfg)
    assert onehot.shape == (4, cfg.num_depth_bins) and onehot.sum() == 1 and onehot[0, 2] == 1
    probs = torch.full((1, cfg.num_depth_bins, 2, 2), 1.0 / cfg.num_depth_bins)
    want = 3.0 * F.binary_cross_entropy(probs[0, :, 0, 0], onehot[0], reduction="sum")
    assert torch.isclose(depth_loss(labels, probs, cfg), want)


def test_deform_conv_zero_offset_is_conv_and_gradients():
    torch.manual_seed(0)
    m = DeformConv2dPack(16, 8, 3, padding=1, groups=4)
    x = torch.randn(2, 16, 5, 7)
    assert torch.allclose(m(x), F.conv2d(x, m.weight, None, 1, 1, 1, 4), atol=1e-5)
    xd = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    off = (torch.rand(1, 18, 4, 5, dtype=torch.float64) * 3 - 1.5).requires_grad_(True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: deform_conv2d(a, b, c, padding=1),
                                    (xd, off, w))


def test_resnet_levels_and_frozen_stem():
    net = ResNet(depth=50, base_channels=8, frozen_stages=0)
    outs = net(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == [32, 64, 128, 256]
    assert [o.shape[2] for o in outs] == [16, 8, 4, 2]
    assert not net.conv1.weight.requires_grad and net.stages[0][0].conv1.weight.requires_grad
    net.train()
    assert not net.bn1.training and net.stages[0][0].bn1.training


def test_plugin_and_view_transform_override():
    names = {cls.name for cls in harness_workloads()}
    assert names == {"bevdepth", "matrixvt"}
    assert MatrixVTWorkload.presets()["smoke"].view_transform == "matrixvt"
    cfg = apply_overrides(BEVDepthWorkload.presets()["smoke"], ["view_transform=matrixvt"])
    assert type(BEVDepthWorkload(cfg).build_model().view_transform).__name__ == \
        "MatrixVTViewTransform"
    assert BEVDepthWorkload.primary_metric == "NDS"
    assert [len(t) for t in TASKS] == [1, 2, 2, 1, 2, 2] and task_offsets()[-1] == 8


@pytest.mark.slow
@pytest.mark.parametrize("view_transform", ["lss", "matrixvt"])
def test_full_preset_one_training_step(view_transform: str):
    cfg = dataclasses.replace(BEVDepthConfig.full(), view_transform=view_transform)
    wl = BEVDepthWorkload(cfg)
    torch.manual_seed(0)
    model = wl.build_model()
    opt = wl.build_optimizer(model)
    batch = random_batch(cfg, batch=1, objects=20)
    t0 = time.perf_counter()
    terms = wl.loss(model, batch)
    sum(terms.values()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    elapsed = time.perf_counter() - t0
    print(f"full {view_transform}: one training step, batch 1 (6 cams 256x704), {elapsed:.1f} s")
    assert all(torch.isfinite(v) for v in terms.values())
