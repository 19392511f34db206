"""YOLOv3: Darknet-53 backbone, mmdet's YOLOV3Neck and YOLOV3Head, and the grid priors.

Channel plan (width 1.0) as in mmdet's yolov3_d53 config: backbone outputs 256/512/1024
at strides 8/16/32; the neck turns them into 512/256/128 (coarse to fine, with top-down
upsampling and concatenation); each head level is a 3x3 bridge conv doubling the channels
and a 1x1 prediction conv with num_anchors * (5 + num_classes) outputs laid out per anchor
as (x, y, w, h, objectness, class logits...). Levels are ordered stride 32, 16, 8.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workloads.layers.darknet import ConvBNLeaky, Darknet, scaled_channels

# mmdet's YOLOAnchorGenerator base sizes (w, h) in pixels at a 416 input, per level.
COCO_ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((116, 90), (156, 198), (373, 326)),  # stride 32
    ((30, 61), (62, 45), (59, 119)),  # stride 16
    ((10, 13), (16, 30), (33, 23)),  # stride 8
)
STRIDES: tuple[int, ...] = (32, 16, 8)
ANCHOR_REFERENCE_SIZE = 416


def scaled_anchors(input_size: int, scale: bool) -> tuple[tuple[tuple[float, float], ...], ...]:
    """The COCO anchors, optionally scaled from the 416 input they were clustered at."""
    f = input_size / ANCHOR_REFERENCE_SIZE if scale else 1.0
    return tuple(tuple((w * f, h * f) for w, h in level) for level in COCO_ANCHORS)


class DetectionBlock(nn.Module):
    """Five alternating 1x1/3x3 convs (out, 2*out, out, 2*out, out) of the YOLOv3 neck."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        double = out_ch * 2
        self.convs = nn.Sequential(
            ConvBNLeaky(in_ch, out_ch, 1), ConvBNLeaky(out_ch, double, 3),
            ConvBNLeaky(double, out_ch, 1), ConvBNLeaky(out_ch, double, 3),
            ConvBNLeaky(double, out_ch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class YOLOv3Neck(nn.Module):
    """Top-down path: detect on the coarsest map, then 1x1 conv, 2x upsample, concat, detect."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        self.detects = nn.ModuleList([DetectionBlock(in_channels[0], out_channels[0])])
        self.laterals = nn.ModuleList()
        for i in range(1, len(in_channels)):
            self.laterals.append(ConvBNLeaky(out_channels[i - 1], out_channels[i], 1))
            self.detects.append(DetectionBlock(in_channels[i] + out_channels[i], out_channels[i]))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """feats coarse to fine (stride 32, 16, 8); returns the same order."""
        x = self.detects[0](feats[0])
        outs = [x]
        for lateral, detect, feat in zip(self.laterals, self.detects[1:], feats[1:]):
            up = F.interpolate(lateral(x), scale_factor=2.0, mode="nearest")
            x = detect(torch.cat([up, feat], dim=1))
            outs.append(x)
        return outs


class YOLOv3Head(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int],
                 num_anchors: int, num_classes: int) -> None:
        super().__init__()
        self.num_attrib = 5 + num_classes
        self.bridges = nn.ModuleList(ConvBNLeaky(i, o, 3) for i, o in zip(in_channels, out_channels))
        self.preds = nn.ModuleList(nn.Conv2d(o, num_anchors * self.num_attrib, 1) for o in out_channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [pred(bridge(x)) for bridge, pred, x in zip(self.bridges, self.preds, feats)]


class YOLOv3(nn.Module):
    """Image batch (B, 3, S, S) in [0, 1] -> raw prediction maps, one per level (32/16/8)."""

    def __init__(self, num_classes: int, input_size: int, width: float = 1.0,
                 depths: Sequence[int] = (1, 2, 8, 8, 4), scale_anchors: bool = False,
                 backbone_norm_eval: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = STRIDES
        self.anchors = scaled_anchors(input_size, scale_anchors)
        self.num_anchors = len(self.anchors[0])
        self.backbone = Darknet(depths=depths, width=width, out_indices=(3, 4, 5),
                                norm_eval=backbone_norm_eval)
        neck_in = list(reversed(self.backbone.out_channels))  # coarse to fine
        neck_out = [scaled_channels(c, width) for c in (512, 256, 128)]
        self.neck = YOLOv3Neck(neck_in, neck_out)
        self.head = YOLOv3Head(neck_out, [2 * c for c in neck_out], self.num_anchors, num_classes)
        self._init_weights(input_size)

    def _init_weights(self, input_size: int) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
        # Priors as mmdet (after ultralytics): ~8 objects per feature map for objectness and
        # p=0.01 per class, so early training is not swamped by the negatives' loss. mmdet
        # uses its largest training size (608); we use the configured input size.
        for pred, stride in zip(self.head.preds, self.strides):
            bias = pred.bias.data.view(self.num_anchors, -1)
            cells = (input_size / stride) ** 2
            bias[:, :4].zero_()
            bias[:, 4].fill_(-math.log((1 - 8 / cells) / (8 / cells)) if cells > 8 else 0.0)
            bias[:, 5:].fill_(-math.log((1 - 0.01) / 0.01))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        c3, c4, c5 = self.backbone(images)
        return self.head(self.neck([c5, c4, c3]))


def grid_priors(model: YOLOv3, pred_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per level, (H*W*A, 4) anchor boxes centred on the cells, ordered (y, x, anchor) to
    match `flatten_preds`. Returned on the maps' device and in float32."""
    out = []
    for level, (pmap, stride) in enumerate(zip(pred_maps, model.strides)):
        h, w = pmap.shape[-2:]
        device = pmap.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        wh = torch.tensor(model.anchors[level], device=device, dtype=torch.float32)  # (A, 2)
        centres = torch.stack([cx, cy], -1).reshape(h * w, 1, 2)
        boxes = torch.cat([centres - wh / 2, centres + wh / 2], dim=-1)  # (HW, A, 4)
        out.append(boxes.reshape(-1, 4))
    return out


def flatten_preds(model: YOLOv3, pred_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, A*(5+C), H, W) per level -> (B, sum H*W*A, 5+C) float32, levels concatenated."""
    flat = []
    for pmap in pred_maps:
        b, _, h, w = pmap.shape
        flat.append(pmap.float().permute(0, 2, 3, 1).reshape(b, h * w * model.num_anchors, -1))
    return torch.cat(flat, dim=1)
