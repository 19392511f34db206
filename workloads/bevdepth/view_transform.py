"""Lift-splat view transform with pure-PyTorch voxel pooling (BEVDepth's BaseLSSFPN part).

Replaces the original's CUDA `voxel_pooling_train` op. Geometry follows the original step
by step: a frustum of (u, v, d) points on the downsampled image grid, undo the image
augmentation (ida), lift with the depth, camera -> ego (sensor2ego @ intrin^-1), then the
BEV augmentation (bda). Cells are ((p - (centre - size/2)) / size).int(): truncation toward
zero like the original, so points in (-1, 0) cells land in cell 0 exactly as there.

Pooling: every frustum point carries depth_prob * context; points outside the grid go to
one extra "trash" row, so the kernel is a single `index_add_` with static shapes and no
host sync (no boolean-mask compaction), which also suits graph-mode accelerators.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

MAT_KEYS = ("sensor2ego_mats", "intrin_mats", "ida_mats", "bda_mat")


def create_frustum(image_size: tuple[int, int], downsample: int,
                   d_bound: tuple[float, float, float]) -> torch.Tensor:
    """(D, fH, fW, 4) homogeneous (u, v, d, 1) points in input-image pixels."""
    ogh, ogw = image_size
    fh, fw = ogh // downsample, ogw // downsample
    d = torch.arange(*d_bound, dtype=torch.float).view(-1, 1, 1).expand(-1, fh, fw)
    num_d = d.shape[0]
    u = torch.linspace(0, ogw - 1, fw, dtype=torch.float).view(1, 1, fw).expand(num_d, fh, fw)
    v = torch.linspace(0, ogh - 1, fh, dtype=torch.float).view(1, fh, 1).expand(num_d, fh, fw)
    return torch.stack((u, v, d, torch.ones_like(d)), -1)


def get_geometry(frustum: torch.Tensor, sensor2ego: torch.Tensor, intrin: torch.Tensor,
                 ida: torch.Tensor, bda: torch.Tensor | None) -> torch.Tensor:
    """Ego-frame xyz of every frustum point: (B, N, D, fH, fW, 3)."""
    b, n = sensor2ego.shape[:2]
    pts = frustum.to(sensor2ego.dtype)
    pts = ida.inverse().view(b, n, 1, 1, 1, 4, 4).matmul(pts.unsqueeze(-1))
    pts = torch.cat((pts[..., :2, :] * pts[..., 2:3, :], pts[..., 2:, :]), dim=-2)
    combine = sensor2ego.matmul(torch.inverse(intrin))
    pts = combine.view(b, n, 1, 1, 1, 4, 4).matmul(pts)
    if bda is not None:
        pts = bda.view(b, 1, 1, 1, 1, 4, 4).matmul(pts)
    return pts.squeeze(-1)[..., :3]


class VoxelGrid(nn.Module):
    """The BEV grid as the original stores it (buffers so they follow the module's device)."""

    def __init__(self, x_bound: tuple[float, float, float], y_bound: tuple[float, float, float],
                 z_bound: tuple[float, float, float]) -> None:
        super().__init__()
        rows = (x_bound, y_bound, z_bound)
        self.register_buffer("voxel_size", torch.tensor([r[2] for r in rows]), persistent=False)
        self.register_buffer("voxel_coord", torch.tensor([r[0] + r[2] / 2.0 for r in rows]),
                             persistent=False)
        self.num = tuple(int((r[1] - r[0]) / r[2]) for r in rows)  # (X, Y, Z)

    def normalized(self, geom: torch.Tensor) -> torch.Tensor:
        """Continuous cell coordinates (before truncation)."""
        return (geom - (self.voxel_coord - self.voxel_size / 2.0)) / self.voxel_size

    def cells(self, geom: torch.Tensor) -> torch.Tensor:
        return self.normalized(geom).int()


def voxel_pooling(cells: torch.Tensor, feats: torch.Tensor, num: tuple[int, int, int]
                  ) -> torch.Tensor:
    """Sum point features into BEV cells.

    cells (B, ..., 3) integer (x, y, z) cell indices; feats (B, ..., C) with the same
    leading shape; num (X, Y, Z). Returns (B, C, Y, X). Points with any index outside
    [0, num) are dropped, like the original kernel.
    """
    nx, ny, nz = num
    b = cells.shape[0]
    c = feats.shape[-1]
    cells = cells.reshape(b, -1, 3).long()
    feats = feats.reshape(b, -1, c)
    x, y, z = cells.unbind(-1)
    keep = (x >= 0) & (x < nx) & (y >= 0) & (y < ny) & (z >= 0) & (z < nz)
    batch = torch.arange(b, device=cells.device).view(b, 1)
    flat = batch * (ny * nx) + y * nx + x
    trash = b * ny * nx
    flat = torch.where(keep, flat, torch.full_like(flat, trash))
    out = feats.new_zeros(trash + 1, c).index_add_(0, flat.view(-1), feats.reshape(-1, c))
    return out[:trash].view(b, ny, nx, c).permute(0, 3, 1, 2)


class LSSViewTransform(nn.Module):
    """Depth distribution x context -> frustum point cloud -> BEV via voxel pooling."""

    def __init__(self, image_size: tuple[int, int], downsample: int,
                 d_bound: tuple[float, float, float], x_bound: tuple[float, float, float],
                 y_bound: tuple[float, float, float], z_bound: tuple[float, float, float]
                 ) -> None:
        super().__init__()
        self.register_buffer("frustum", create_frustum(image_size, downsample, d_bound),
                             persistent=False)
        self.grid = VoxelGrid(x_bound, y_bound, z_bound)
        self.depth_channels = self.frustum.shape[0]

    def geometry(self, mats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return get_geometry(self.frustum, mats["sensor2ego_mats"], mats["intrin_mats"],
                            mats["ida_mats"], mats.get("bda_mat"))

    def forward(self, depth: torch.Tensor, context: torch.Tensor,
                mats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """depth (B*N, D, h, w) probabilities, context (B*N, C, h, w) -> (B, C, Y, X)."""
        b, n = mats["sensor2ego_mats"].shape[:2]
        with torch.no_grad():
            cells = self.grid.cells(self.geometry(mats))  # (B, N, D, h, w, 3)
        bn, d, h, w = depth.shape
        c = context.shape[1]
        # (B, N, D, h, w, 1) * (B, N, 1, h, w, C): the point features, built in pooling order.
        feats = depth.view(b, n, d, h, w, 1) * context.view(b, n, c, h, w).permute(
            0, 1, 3, 4, 2).unsqueeze(2)
        return voxel_pooling(cells, feats, self.grid.num)
