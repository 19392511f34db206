"""Voxel pooling and lift-splat geometry against straightforward reference loops."""
from __future__ import annotations

import dataclasses

import torch

from workloads.bevdepth.config import BEVDepthConfig
from workloads.bevdepth.testing import camera_rig
from workloads.bevdepth.view_transform import (
    LSSViewTransform,
    VoxelGrid,
    create_frustum,
    get_geometry,
    voxel_pooling,
)


def reference_pooling(cells: torch.Tensor, feats: torch.Tensor, num: tuple[int, int, int]
                      ) -> torch.Tensor:
    """One point at a time, exactly what the CUDA kernel does (without the atomics)."""
    nx, ny, nz = num
    b = cells.shape[0]
    c = feats.shape[-1]
    cells = cells.reshape(b, -1, 3).tolist()
    feats = feats.reshape(b, -1, c)
    out = torch.zeros(b, ny, nx, c, dtype=feats.dtype)
    for i in range(b):
        for p, (x, y, z) in enumerate(cells[i]):
            if 0 <= x < nx and 0 <= y < ny and 0 <= z < nz:
                out[i, y, x] += feats[i, p]
    return out.permute(0, 3, 1, 2)


def _random_case(seed: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    num = (5, 4, 2)
    cells = torch.randint(-2, 7, (2, 3, 7, 3), generator=g, dtype=torch.int32)
    feats = torch.randint(-8, 9, (2, 3, 7, 6), generator=g).to(dtype)  # integers: exact sums
    return cells, feats, num


def test_pooling_matches_reference_loop_exactly():
    for seed in range(3):
        cells, feats, num = _random_case(seed)
        got = voxel_pooling(cells, feats, num)
        assert got.shape == (2, 6, 4, 5)
        assert torch.equal(got, reference_pooling(cells, feats, num))


def test_pooling_same_cells_on_real_geometry():
    cfg = dataclasses.replace(BEVDepthConfig.smoke(), d_bound=(2.0, 58.0, 4.0))
    vt = LSSViewTransform(cfg.image_size, cfg.downsample_factor, cfg.d_bound, cfg.x_bound,
                          cfg.y_bound, cfg.z_bound)
    cells = vt.grid.cells(vt.geometry(camera_rig(2, cfg.image_size)))
    g = torch.Generator().manual_seed(0)
    feats = torch.randint(-4, 5, (*cells.shape[:-1], 3), generator=g).float()
    got = voxel_pooling(cells, feats, vt.grid.num)
    assert torch.equal(got, reference_pooling(cells, feats, vt.grid.num))
    # Occupancy: the same cells are hit as by the reference.
    ones = torch.ones(*cells.shape[:-1], 1)
    assert torch.equal(voxel_pooling(cells, ones, vt.grid.num),
                       reference_pooling(cells, ones, vt.grid.num))


def test_pooling_gradients():
    cells, feats, num = _random_case(1, torch.float64)
    feats.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: voxel_pooling(cells, f, num), (feats,))
    # and they equal the reference loop's gradients for a random upstream gradient
    up = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad((voxel_pooling(cells, feats, num) * up).sum(), feats)
    (g_ref,) = torch.autograd.grad((reference_pooling(cells, feats, num) * up).sum(), feats)
    assert torch.allclose(g_ours, g_ref)


def test_cells_truncate_toward_zero_like_original():
    grid = VoxelGrid((-4.0, 4.0, 1.0), (-4.0, 4.0, 1.0), (-5.0, 3.0, 8.0))
    geom = torch.tensor([[-4.5, -3.2, 0.0], [3.99, 0.5, -9.0], [4.2, -4.0, 2.9]])
    cells = grid.cells(geom)
    # -4.5 m is half a cell below the grid: (-0.5).int() == 0, kept as the original keeps it.
    assert cells.tolist() == [[0, 0, 0], [7, 4, 0], [8, 0, 0]]
    # The original's exact expression, evaluated on the same float32 buffers.
    size = torch.tensor([1.0, 1.0, 8.0])
    coord = torch.tensor([-4.0 + 0.5, -4.0 + 0.5, -5.0 + 4.0])
    assert torch.equal(cells, ((geom - (coord - size / 2.0)) / size).int())


def test_geometry_matches_per_point_computation():
    cfg = BEVDepthConfig.smoke()
    mats = camera_rig(1, cfg.image_size)
    # a non-trivial ida (resize + crop + flip) and bda (rotation + flip)
    ida = torch.eye(4)
    ida[0, 0], ida[1, 1], ida[0, 3], ida[1, 3] = -0.9, 0.9, 170.0, -3.0
    mats["ida_mats"] = ida.expand(1, 6, 4, 4).clone()
    bda = torch.eye(4)
    bda[:2, :2] = torch.tensor([[0.8, -0.6], [0.6, 0.8]])
    bda[1] *= -1
    mats["bda_mat"] = bda.view(1, 4, 4)
    frustum = create_frustum(cfg.image_size, cfg.downsample_factor, cfg.d_bound)
    geom = get_geometry(frustum, mats["sensor2ego_mats"], mats["intrin_mats"], mats["ida_mats"],
                        mats["bda_mat"])
    d, h, w = frustum.shape[:3]
    for cam in (0, 4):
        s2e = mats["sensor2ego_mats"][0, cam].double()
        k_inv = torch.inverse(mats["intrin_mats"][0, cam].double())
        ida_inv = torch.inverse(ida.double())
        for di, hi, wi in ((0, 0, 0), (d - 1, h - 1, w - 1), (d // 2, 1, w // 3)):
            u, v, depth, _ = frustum[di, hi, wi].double().tolist()
            p = ida_inv @ torch.tensor([u, v, depth, 1.0], dtype=torch.float64)
            p = torch.tensor([p[0] * p[2], p[1] * p[2], p[2], 1.0], dtype=torch.float64)
            ego = bda.double() @ s2e @ k_inv @ p
            assert torch.allclose(geom[0, cam, di, hi, wi].double(), ego[:3], atol=1e-3)


def test_lss_view_transform_gradients_flow():
    cfg = dataclasses.replace(BEVDepthConfig.smoke(), d_bound=(2.0, 58.0, 8.0), image_size=(32, 64))
    vt = LSSViewTransform(cfg.image_size, cfg.downsample_factor, cfg.d_bound, cfg.x_bound,
                          cfg.y_bound, cfg.z_bound).double()
    mats = {k: v.double() for k, v in camera_rig(1, cfg.image_size).items()}
    h, w = cfg.image_size[0] // 16, cfg.image_size[1] // 16
    depth = torch.rand(6, 7, h, w, dtype=torch.float64).softmax(1).requires_grad_(True)
    ctx = torch.randn(6, 2, h, w, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: vt(a, b, mats), (depth, ctx))
