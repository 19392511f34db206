"""BEVDepthHead: BEV ResNet trunk + SECONDFPN + CenterPoint task heads, and its targets.

Network (mmdet3d CenterHead as BEVDepth configures it): the BEV map and the three trunk
stages (stem stride 2, no max-pool, stage strides 1/2/2) are brought back to the BEV
resolution by a SECONDFPN and concatenated; a shared 3x3 conv, then per task group one
SeparateHead: for reg(2) height(1) dim(3) rot(2) vel(2) heatmap(n): a conv-BN-ReLU and a
final conv, both k x k (k = head_final_kernel, 3 as BEVDepth); heatmap bias -2.19. Runs
in fp32 like the original (autocast off).

Targets (`build_targets`), as BEVDepthHead.get_targets_single, batched: the head grid is the
BEV grid (out_size_factor * voxel_size = BEV cell); centre cell = truncated continuous
cell; radius = max(min_radius, int(gaussian_radius((l, w) in cells, overlap))); box target
[dx, dy, z, log w, log l, log h, sin yaw, cos yaw, vx, vy]; objects whose centre falls
outside the grid, with non-positive size, or beyond `max_objs` per (sample, task) are
ignored. All objects of a batch are processed at once; membership in a task is a weight,
not a boolean index, so there is no host sync.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from workloads.bevdepth.config import TASKS, BEVDepthConfig
from workloads.layers.fpn import SECONDFPN
from workloads.layers.gaussian import draw_gaussians, gaussian_radius
from workloads.layers.resnet import ResNet

BOX_HEADS: dict[str, int] = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
CODE_SIZE = sum(BOX_HEADS.values())


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SeparateHead(nn.Module):
    def __init__(self, in_channels: int, head_conv: int, heads: dict[str, int],
                 init_bias: float = -2.19, final_kernel: int = 3) -> None:
        super().__init__()
        self.heads = nn.ModuleDict()
        k = final_kernel
        for name, out in heads.items():
            final = nn.Conv2d(head_conv, out, k, padding=k // 2, bias=True)
            branch = nn.Sequential(_conv_bn_relu(in_channels, head_conv, k), final)
            if name == "heatmap":
                nn.init.constant_(final.bias, init_bias)
            else:
                for m in branch.modules():
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(final.bias)
            self.heads[name] = branch

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: branch(x) for name, branch in self.heads.items()}


class CenterPointHead(nn.Module):
    def __init__(self, cfg: BEVDepthConfig) -> None:
        super().__init__()
        cin = cfg.context_channels * cfg.num_keys  # the key frames' BEV features, stacked
        self.trunk = ResNet(depth=cfg.bev_depth, in_channels=cin,
                            base_channels=cfg.bev_base_channels, num_stages=3, strides=(1, 2, 2),
                            dilations=(1, 1, 1), out_indices=(0, 1, 2),
                            stage_blocks=cfg.bev_stage_blocks or None, with_maxpool=False)
        self.neck = SECONDFPN([cin, *self.trunk.out_channels], [cfg.bev_neck_channels] * 4,
                              [1, 2, 4, 8])
        self.shared_conv = _conv_bn_relu(self.neck.out_channels, cfg.head_share_channels)
        self.task_heads = nn.ModuleList(
            SeparateHead(cfg.head_share_channels, cfg.head_conv_channels,
                         {**BOX_HEADS, "heatmap": len(task)},
                         final_kernel=cfg.head_final_kernel) for task in TASKS)

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            levels = self.trunk(x)
            feat = self.shared_conv(self.neck([x, *levels]))
            return [head(feat) for head in self.task_heads]


@dataclasses.dataclass
class Targets:
    """Training targets of one batch; per-object tensors cover every GT box of the batch."""

    heatmaps: list[torch.Tensor]  # per task (B, n_task, Y, X)
    batch_idx: torch.Tensor  # (P,) sample of each object
    ind: torch.Tensor  # (P,) flat cell y * X + x
    boxes: torch.Tensor  # (P, 10) regression targets (NaN-free)
    weights: list[torch.Tensor]  # per task (P, 10): code weight if the object counts
    num_objs: list[torch.Tensor]  # per task: objects counted (scalar tensor)


def task_offsets() -> list[int]:
    out, flag = [], 0
    for task in TASKS:
        out.append(flag)
        flag += len(task)
    return out


def build_targets(gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
                  cfg: BEVDepthConfig, device: torch.device | None = None) -> Targets:
    device = device or (gt_boxes[0].device if gt_boxes else torch.device("cpu"))
    b = len(gt_boxes)
    nx, ny = cfg.bev_size
    num_classes = sum(len(t) for t in TASKS)
    boxes = torch.cat([g.reshape(-1, 9) for g in gt_boxes]).to(device=device,
                                                                 dtype=torch.float32)
    labels = torch.cat([lab.reshape(-1) for lab in gt_labels]).to(device=device).long()
    batch_idx = torch.cat([torch.full((g.reshape(-1, 9).shape[0],), i, dtype=torch.long)
                           for i, g in enumerate(gt_boxes)]).to(device)
    cell_x, cell_y = cfg.x_bound[2], cfg.y_bound[2]
    cx = (boxes[:, 0] - cfg.x_bound[0]) / cell_x
    cy = (boxes[:, 1] - cfg.y_bound[0]) / cell_y
    cxi, cyi = cx.to(torch.int32).long(), cy.to(torch.int32).long()  # truncation, as the original
    width, length = boxes[:, 3] / cell_x, boxes[:, 4] / cell_y
    radius = gaussian_radius(length, width, cfg.gaussian_overlap)
    radius = torch.nan_to_num(radius, nan=0.0).to(torch.int32).clamp(min=cfg.min_radius)

    known = (labels >= 0) & (labels < num_classes)
    label_c = labels.clamp(0, num_classes - 1)
    offsets = torch.tensor(task_offsets(), device=device)
    task_of = torch.bucketize(label_c, offsets, right=True) - 1
    rank = _rank_in_group(batch_idx * len(TASKS) + task_of)
    valid = (known & (width > 0) & (length > 0) & (cxi >= 0) & (cxi < nx) & (cyi >= 0)
             & (cyi < ny) & (rank < cfg.max_objs))

    # One draw for all classes; objects that do not count go to an extra (dropped) map.
    map_index = torch.where(valid, batch_idx * num_classes + label_c,
                            torch.full_like(batch_idx, b * num_classes))
    heat = draw_gaussians(b * num_classes + 1, ny, nx, map_index,
                          torch.stack([cxi.clamp(0, nx - 1), cyi.clamp(0, ny - 1)], 1), radius)
    heat = heat[: b * num_classes].view(b, num_classes, ny, nx)
    heatmaps = [heat[:, o:o + len(t)] for o, t in zip(task_offsets(), TASKS)]

    yaw = boxes[:, 6]
    target = torch.cat([
        (cx - cxi)[:, None], (cy - cyi)[:, None], boxes[:, 2:3],
        boxes[:, 3:6].clamp(min=1e-6).log(), torch.sin(yaw)[:, None], torch.cos(yaw)[:, None],
        boxes[:, 7:9]], dim=1)
    finite = ~torch.isnan(target)
    code = torch.tensor(cfg.box_code_weights(), device=device, dtype=torch.float32)
    weights, num_objs = [], []
    for t in range(len(TASKS)):
        member = (valid & (task_of == t)).float()
        weights.append(member[:, None] * finite.float() * code)
        num_objs.append(member.sum())
    ind = cyi.clamp(0, ny - 1) * nx + cxi.clamp(0, nx - 1)
    return Targets(heatmaps, batch_idx, ind, torch.nan_to_num(target), weights, num_objs)


def _rank_in_group(key: torch.Tensor) -> torch.Tensor:
    """Position of each element among the elements with the same key, in input order."""
    if key.numel() == 0:
        return key
    order = torch.sort(key, stable=True).indices
    sorted_key = key[order]
    pos = torch.arange(key.numel(), device=key.device)
    is_start = torch.ones_like(sorted_key, dtype=torch.bool)
    is_start[1:] = sorted_key[1:] != sorted_key[:-1]
    group_start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), 0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - group_start
    return rank


def gather_box_preds(pred: dict[str, torch.Tensor], batch_idx: torch.Tensor,
                     ind: torch.Tensor) -> torch.Tensor:
    """(P, 10) box-regression outputs at each object's cell, in target order."""
    box = torch.cat([pred[k] for k in BOX_HEADS], dim=1)  # (B, 10, Y, X)
    flat = box.flatten(2).permute(0, 2, 1)  # (B, Y*X, 10)
    return flat[batch_idx, ind]
