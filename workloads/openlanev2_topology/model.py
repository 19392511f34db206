"""The OpenLane-V2 baseline network: ResNet -> FPN (one stride-16 level) -> IPM BEV ->
lane DETR head on the BEV, traffic-element DETR head on the front view, topology MLPs.

IPM (CustomIPMViewTransformer): the BEV grid x = linspace(x0, x1, X), y = linspace(y0, y1, Y)
(endpoints included) at each of the height planes is projected into every camera with
lidar2img; features are bilinearly sampled (grid_sample, zeros padding, align_corners False)
and averaged over the cameras that see the point (depth > 0, inside the image); the grid's xyz
(metres) is appended per plane and a 3x3 conv maps (C+3)*planes channels back to C. One
deliberate difference: pixel coordinates are normalised by the padded input size the feature
map covers, where the original divides by the unpadded first-view shape (1550 rows of a 1568-row
feature extent, a ~1% vertical misalignment at full resolution; none in `smoke`, which needs
no padding).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workloads.layers.resnet import ResNet
from workloads.openlanev2_topology.config import TE_ATTRIBUTES, OpenLaneV2Config
from workloads.openlanev2_topology.heads import DETRHead, TopologyHead


class OneLevelFPN(nn.Module):
    """mmdet FPN with num_outs=1, out_ids=[0]: laterals, nearest top-down adds, 3x3 on level 0."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:],
                                                    mode="nearest")
        return self.out_conv(lat[0])


def bev_planes(cfg: OpenLaneV2Config) -> torch.Tensor:
    """(planes, Y, X, 3) ego-frame points of the IPM grid."""
    x0, y0, z0, x1, y1, z1 = cfg.bev_range
    ny, nx = cfg.bev_size
    ys, xs = torch.meshgrid(torch.linspace(y0, y1, ny), torch.linspace(x0, x1, nx),
                            indexing="ij")
    heights = torch.linspace(z0, z1, cfg.num_height_planes)
    return torch.stack([torch.stack([xs, ys, torch.full_like(xs, float(h))], -1)
                        for h in heights])


class IPMViewTransform(nn.Module):
    def __init__(self, cfg: OpenLaneV2Config, channels: int) -> None:
        super().__init__()
        self.register_buffer("planes", bev_planes(cfg), persistent=False)
        self.out_conv = nn.Conv2d((channels + 3) * cfg.num_height_planes, channels, 3, padding=1)

    def forward(self, feats: torch.Tensor, lidar2img: torch.Tensor,
                input_hw: tuple[int, int]) -> torch.Tensor:
        """feats (B*N, C, h, w); lidar2img (B, N, 4, 4) in input pixels -> BEV (B, C, Y, X)."""
        b, n = lidar2img.shape[:2]
        planes = self.planes.to(feats.dtype)
        nz, ny, nx, _ = planes.shape
        pts = torch.cat([planes.reshape(-1, 3), planes.new_ones(nz * ny * nx, 1)], 1)
        cam = torch.einsum("bnij,pj->bnpi", lidar2img.to(feats.dtype), pts)
        depth = cam[..., 2]
        uv = cam[..., :2] / depth.clamp(min=1e-5).unsqueeze(-1)
        h, w = input_hw
        grid = torch.stack([uv[..., 0] / w, uv[..., 1] / h], -1) * 2 - 1
        visible = (depth > 1e-5) & (grid.abs() < 1).all(-1)  # (B, N, P)
        sampled = F.grid_sample(feats, grid.reshape(b * n, nz * ny, nx, 2), mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        sampled = sampled.view(b, n, -1, nz * ny * nx)
        mask = visible.unsqueeze(2).to(sampled.dtype)
        bev = (sampled * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, C, P)
        xyz = planes.permute(3, 0, 1, 2).reshape(3, -1).expand(b, -1, -1)
        bev = torch.cat([bev, xyz], 1).view(b, -1, nz, ny, nx).flatten(1, 2)
        return self.out_conv(bev)


class OpenLaneV2Baseline(nn.Module):
    def __init__(self, cfg: OpenLaneV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(cfg.backbone_depth, base_channels=cfg.backbone_base_channels,
                               out_indices=(2, 3),
                               stage_blocks=cfg.backbone_stage_blocks or None)
        c = cfg.fpn_channels
        self.neck = OneLevelFPN(self.backbone.out_channels[2:4], c)
        self.view_transform = IPMViewTransform(cfg, c)
        head = dict(dims=cfg.embed_dims, heads=cfg.num_heads, ffn=cfg.ffn_channels,
                    dropout=cfg.dropout)
        self.lc_head = DETRHead(c, 1, cfg.num_lane_queries, 3 * cfg.num_control_points, **head)
        self.te_head = DETRHead(c, len(TE_ATTRIBUTES), cfg.num_te_queries, 4, **head)
        self.lclc_head = TopologyHead(2 * cfg.embed_dims, cfg.topology_hidden, cfg.topology_layers)
        self.lcte_head = TopologyHead(2 * cfg.embed_dims, cfg.topology_hidden, cfg.topology_layers)

    def forward(self, imgs: torch.Tensor, lidar2img: torch.Tensor,
                front_valid_hw: torch.Tensor) -> dict[str, Any]:
        """imgs (B, N, 3, H, W) padded; lidar2img (B, N, 4, 4); front_valid_hw (B, 2) unpadded."""
        b, n, _, h, w = imgs.shape
        feats = self.neck(self.backbone(imgs.flatten(0, 1)))  # (B*N, C, h/16, w/16)
        bev = self.view_transform(feats, lidar2img, (h, w))
        front = feats.view(b, n, *feats.shape[1:])[:, 0]
        fh, fw = front.shape[-2:]
        # padding mask of the front view at feature resolution (True = padded)
        rows = torch.arange(fh, device=imgs.device).view(1, fh, 1) * (h / fh)
        cols = torch.arange(fw, device=imgs.device).view(1, 1, fw) * (w / fw)
        valid = front_valid_hw.to(imgs.device)
        mask = (rows >= valid[:, 0].view(b, 1, 1)) | (cols >= valid[:, 1].view(b, 1, 1))
        lc_cls, lc_reg, lc_embed = self.lc_head(bev)
        te_cls, te_reg, te_embed = self.te_head(front, mask)
        return {"lc_cls": lc_cls, "lc_reg": lc_reg, "te_cls": te_cls, "te_reg": te_reg,
                "lclc": self.lclc_head(lc_embed, lc_embed),
                "lcte": self.lcte_head(lc_embed, te_embed)}
