"""BEVDepth / MatrixVT network: image encoder, camera-aware DepthNet, view transform, head.

Maps to Megvii's code as follows: `ImageEncoder` = mmdet ResNet + mmdet3d SECONDFPN
(`BaseLSSFPN.get_cam_feats`); `DepthNet` = `base_lss_fpn.DepthNet` (27 calibration
numbers -> BN -> two MLPs -> SE gates on the reduced features; the depth branch adds three
BasicBlocks, ASPP and a deformable conv before the 1x1 to D bins); the view transform is
`LSSViewTransform` (BaseLSSFPN's voxel pooling) or `MatrixVTViewTransform`; the head is the
BEVDepthHead (BEV ResNet trunk + SECONDFPN + CenterPoint heads) in head.py.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from workloads.bevdepth.config import BEVDepthConfig
from workloads.bevdepth.head import CenterPointHead
from workloads.bevdepth.matrixvt import MatrixVTViewTransform
from workloads.bevdepth.multikey import key_mats
from workloads.bevdepth.view_transform import LSSViewTransform
from workloads.layers.deform_conv import DeformConv2dPack
from workloads.layers.fpn import SECONDFPN
from workloads.layers.resnet import BasicBlock, ResNet


def _conv_bn_relu(cin: int, cout: int, k: int, padding: int = 0, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (dilations 1/6/12/18 + image pooling), dropout 0.5."""

    def __init__(self, inplanes: int, mid: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(inplanes, mid, 1)]
            + [_conv_bn_relu(inplanes, mid, 3, padding=d, dilation=d) for d in (6, 12, 18)])
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(inplanes, mid, 1))
        self.project = _conv_bn_relu(mid * 5, mid, 1)
        self.dropout = nn.Dropout(0.5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        pooled = F.interpolate(self.image_pool(x), size=x.shape[2:], mode="bilinear",
                               align_corners=True)
        return self.dropout(self.project(torch.cat(outs + [pooled], dim=1)))


class Mlp(nn.Sequential):
    def __init__(self, cin: int, hidden: int, cout: int) -> None:
        super().__init__(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class SELayer(nn.Module):
    """Gate x with sigmoid(conv(relu(conv(x_se)))): x_se carries the camera embedding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels, 1)
        self.expand = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, x_se: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(x_se))))


def camera_params(mats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The 27 calibration/augmentation numbers per camera the DepthNet MLPs see: (B*N, 27)."""
    intrin, ida, s2e = mats["intrin_mats"], mats["ida_mats"], mats["sensor2ego_mats"]
    b, n = intrin.shape[:2]
    bda = mats.get("bda_mat")
    if bda is None:
        bda = torch.eye(4, dtype=intrin.dtype, device=intrin.device).expand(b, 4, 4)
    bda = bda.view(b, 1, 4, 4).expand(b, n, 4, 4)
    picks = [
        intrin[..., 0, 0], intrin[..., 1, 1], intrin[..., 0, 2], intrin[..., 1, 2],
        ida[..., 0, 0], ida[..., 0, 1], ida[..., 0, 3], ida[..., 1, 0], ida[..., 1, 1],
        ida[..., 1, 3],
        bda[..., 0, 0], bda[..., 0, 1], bda[..., 1, 0], bda[..., 1, 1], bda[..., 2, 2],
    ]
    params = torch.cat([torch.stack(picks, dim=-1), s2e[..., :3, :].reshape(b, n, 12)], dim=-1)
    return params.reshape(b * n, 27)


class DepthNet(nn.Module):
    """Camera-aware depth + context prediction; returns (depth logits, context)."""

    def __init__(self, in_channels: int, mid: int, context_channels: int, depth_channels: int,
                 use_aspp: bool = True, use_dcn: bool = True) -> None:
        super().__init__()
        self.reduce_conv = nn.Sequential(nn.Conv2d(in_channels, mid, 3, padding=1),
                                         nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.context_conv = nn.Conv2d(mid, context_channels, 1)
        self.bn = nn.BatchNorm1d(27)
        self.depth_mlp = Mlp(27, mid, mid)
        self.depth_se = SELayer(mid)
        self.context_mlp = Mlp(27, mid, mid)
        self.context_se = SELayer(mid)
        layers: list[nn.Module] = [BasicBlock(mid, mid) for _ in range(3)]
        if use_aspp:
            layers.append(ASPP(mid, mid))
        groups = 4 if mid % 4 == 0 else 1
        if use_dcn:
            layers.append(DeformConv2dPack(mid, mid, 3, padding=1, groups=groups))
        else:
            layers.append(nn.Conv2d(mid, mid, 3, padding=1, groups=groups, bias=False))
        layers.append(nn.Conv2d(mid, depth_channels, 1))
        self.depth_conv = nn.Sequential(*layers)
        self.depth_channels = depth_channels

    def forward(self, x: torch.Tensor, mats: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.bn(camera_params(mats).float())
        x = self.reduce_conv(x)
        context = self.context_conv(self.context_se(x, self.context_mlp(cam)[..., None, None]))
        depth = self.depth_conv(self.depth_se(x, self.depth_mlp(cam)[..., None, None]))
        return depth, context


class ImageEncoder(nn.Module):
    """ResNet + SECONDFPN bringing all four stages to the depth net's stride."""

    def __init__(self, cfg: BEVDepthConfig) -> None:
        super().__init__()
        pretrained = bool(cfg.backbone_weights)
        # The original freezes the stem of a pretrained R50; freezing a random one (and its
        # BatchNorm statistics) for the whole run would only cripple it.
        self.backbone = ResNet(
            depth=cfg.backbone_depth, base_channels=cfg.backbone_base_channels,
            stage_blocks=cfg.backbone_stage_blocks or None,
            frozen_stages=cfg.backbone_frozen_stages if pretrained else -1,
            norm_eval=cfg.backbone_norm_eval and pretrained)
        # The weights themselves are loaded by the host (harness/start_weights.py) once the
        # model is built, in the layouts the workload declares.
        level_strides = [4 * 2**i for i in range(4)]
        self.neck = SECONDFPN(self.backbone.out_channels, [cfg.neck_channels] * 4,
                              [s / cfg.downsample_factor for s in level_strides])
        self.out_channels = self.neck.out_channels

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(imgs))


class BEVDepth(nn.Module):
    """imgs (B, N, 3, H, W) + mats -> (per-task head outputs, depth probabilities)."""

    def __init__(self, cfg: BEVDepthConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ImageEncoder(cfg)
        geometry = (cfg.image_size, cfg.downsample_factor, cfg.d_bound, cfg.x_bound,
                    cfg.y_bound, cfg.z_bound)
        if cfg.view_transform == "matrixvt":
            self.view_transform: nn.Module = MatrixVTViewTransform(
                *geometry, cfg.context_channels, cfg.matrixvt_mid_channels)
        else:
            self.view_transform = LSSViewTransform(*geometry)
        self.depth_channels = self.view_transform.depth_channels
        self.depth_net = DepthNet(self.encoder.out_channels, cfg.depth_mid_channels,
                                  cfg.context_channels, self.depth_channels,
                                  cfg.depth_use_aspp, cfg.depth_use_dcn)
        self.head = CenterPointHead(cfg)

    def bev(self, imgs: torch.Tensor, mats: Mapping[str, torch.Tensor],
            depth_mats: Mapping[str, torch.Tensor] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """One key frame: imgs (B, N, 3, H, W) -> BEV (B, C, Y, X) and depth logits.
        `depth_mats`: the camera parameters the depth net reads (default `mats`)."""
        feats = self.encoder(imgs.flatten(0, 1))
        depth_logits, context = self.depth_net(feats, mats if depth_mats is None else depth_mats)
        return self.view_transform(depth_logits.softmax(dim=1), context, mats), depth_logits

    def forward(self, imgs: torch.Tensor, mats: Mapping[str, torch.Tensor]
                ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """imgs (B, N, 3, H, W), or (B, K, N, 3, H, W) with K key frames (current first, mats
        (B, K, N, 4, 4) already in the current key ego: multikey.py). The previous keys' BEV
        features are computed without gradient and concatenated, as the original."""
        if imgs.dim() == 5:
            bev, depth_logits = self.bev(imgs, mats)
        else:
            current = key_mats(dict(mats), 0)
            bev, depth_logits = self.bev(imgs[:, 0], current)
            bevs = [bev]
            for k in range(1, imgs.shape[1]):
                # As the original (base_lss_fpn.py DepthNet: mats_dict[...][:, 0:1]), every key
                # frame's depth net reads the current key's camera parameters; the voxel
                # pooling places each frame with its own geometry.
                with torch.no_grad():
                    bevs.append(self.bev(imgs[:, k], key_mats(dict(mats), k), current)[0])
            bev = torch.cat(bevs, dim=1)
        # The depth loss needs fp32 probabilities (the original notes it collapses otherwise).
        return self.head(bev), depth_logits.float().softmax(dim=1)
