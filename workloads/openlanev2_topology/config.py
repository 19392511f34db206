"""OpenLane-V2 baseline configuration: one frozen dataclass, presets `smoke` and `full`.

`full` is OpenLane-V2's `configs/baseline.py` (plugin/models/baseline, mmdet3d 1.0.0rc6):
ResNet-18 on the 7 ring cameras at full resolution (every view resized to 1550x2048, the
portrait front view stretched as the original's ResizeFrontView does, padded to /32), an FPN
to one stride-16 level of 128 channels, the IPM view transform over 11 height planes (-3..2 m)
onto a 50x100 BEV of [-50, 50] x [-25, 25] m, a lane-centerline DETR head on the BEV (50
queries, 5 Bezier control points x xyz -> 11 points), a traffic-element DETR head on the front
view (30 queries, 13 attributes), MLP topology heads for lane-lane and lane-TE; losses and
weights as published (focal 1.0, L1 2.5, GIoU 1.0, topology focal 2.0), AdamW 1e-4, weight
decay 1e-4, grad clip 35, cosine with 500 linear warmup iterations from 1/3, 20 epochs at
8 GPUs x 2 (28096 optimizer steps at that global batch of 16; on fewer devices keep it with
--grad-accum: one device at batch 2 needs --grad-accum 8; the seed's DeepSpeed setup, batch 2
x acc 2 on one GPU, is a global batch of 4).

`smoke` keeps every component, narrowed: the three front cameras (ring_front_center, _left,
_right; every synthetic centerline reaches into their view) at 96x128, ResNet-18 layout at
base width 16 with one block per stage, 32-channel FPN/BEV, a 16x32 BEV (3.2 m cells), 32-d
heads, 30 lane / 10 TE queries, no dropout, lr 1e-3 with 40 warmup steps, on 48 synthetic
subset_A-layout train segments (written at a quarter of the real image size so the cache is
quick; the resize follows each source image's size). Why dropout 0 and 48 segments (not 0.1
and 12), with the seeds' figures: README, OpenLane-V2.

`optimizer="adam"` is the seed's DeepSpeed configuration (Adam, lr 1e-4, no weight decay, no
schedule); with `--deepspeed --precision fp16 --grad-accum 2` and the batch of 2 it is the
seed's run (README).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from harness.workload_config import WorkloadConfig

CAMERAS: tuple[str, ...] = (
    "ring_front_center", "ring_front_left", "ring_front_right", "ring_rear_left",
    "ring_rear_right", "ring_side_left", "ring_side_right",
)
# openlanev2.utils.TRAFFIC_ELEMENT_ATTRIBUTE, by index.
TE_ATTRIBUTES: tuple[str, ...] = (
    "unknown", "red", "green", "yellow", "go_straight", "turn_left", "turn_right",
    "no_left_turn", "no_right_turn", "u_turn", "no_u_turn", "slight_left", "slight_right",
)
SUBSET_A_TRAIN_FRAMES = 22477


@dataclasses.dataclass(frozen=True)
class OpenLaneV2Config(WorkloadConfig):
    # -- cameras and input; `cameras` comes from the data unless set (ring_front_center first) --
    cameras: tuple[str, ...] = CAMERAS
    num_cameras: int = 7  # the model sees the first num_cameras of `cameras`
    input_size: tuple[int, int] = (1550, 2048)  # (H, W) every view is resized to
    pad_divisor: int = 32
    photometric_aug: bool = True  # train only (BEVFormer-style PhotoMetricDistortion)
    cache_images: bool = False  # keep decoded, resized views in memory (small datasets)
    # -- image backbone and neck --
    backbone_depth: int = 18
    backbone_base_channels: int = 64
    backbone_stage_blocks: tuple[int, ...] = ()  # () = the depth's standard table
    # Starting weights in the originals' layouts (docs/workloads/openlanev2.md): a pretrained
    # backbone file and a whole-model checkpoint; "" = random init. Nothing is downloaded.
    backbone_weights: str = ""
    init_checkpoint: str = ""
    fpn_channels: int = 128
    # -- IPM view transform --
    bev_range: tuple[float, ...] = (-50.0, -25.0, -3.0, 50.0, 25.0, 2.0)
    bev_size: tuple[int, int] = (50, 100)  # (Y cells, X cells)
    num_height_planes: int = 11
    # -- DETR heads and topology heads --
    embed_dims: int = 64
    num_heads: int = 4
    ffn_channels: int = 512
    dropout: float = 0.1
    num_lane_queries: int = 50
    num_te_queries: int = 30
    num_control_points: int = 5
    num_lane_points: int = 11
    topology_hidden: int = 128
    topology_layers: int = 3
    # -- losses (published weights) --
    lc_cls_weight: float = 1.0
    lc_bbox_weight: float = 2.5
    te_cls_weight: float = 1.0
    te_bbox_weight: float = 2.5
    te_iou_weight: float = 1.0
    topology_weight: float = 2.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    # "original": focal loss on the head's already-sigmoided output, as the baseline does
    # (README); "logits": focal loss on the MLP's logits (the corrected form).
    topology_loss: Literal["original", "logits"] = "original"
    # -- optimisation (the runner reads batch_size, eval_batch_size, steps, grad_clip,
    #    num_workers) --
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3
    min_lr_ratio: float = 1e-3
    batch_size: int = 2
    eval_batch_size: int = 2
    steps: int = 20 * SUBSET_A_TRAIN_FRAMES // 16  # at the published global batch 8 x 2
    grad_clip: float | None = 35.0
    num_workers: int = 4
    # -- decoding --
    max_lanes: int = 50  # kept per frame, by confidence
    # -- synthetic subset_A written when no --data is given --
    synthetic_seed: int = 0
    synthetic_train_segments: int = 12
    synthetic_val_segments: int = 4  # 4 x 8 frames hold all 13 attributes (seed 0)
    synthetic_frames_per_segment: int = 8
    synthetic_image_scale: float = 1.0  # 1.0 = the real sizes (2048x1550, front 1550x2048)

    @classmethod
    def full(cls) -> OpenLaneV2Config:
        return cls()

    @classmethod
    def smoke(cls) -> OpenLaneV2Config:
        return cls(num_cameras=3, input_size=(96, 128), backbone_base_channels=16,
                   backbone_stage_blocks=(1, 1, 1, 1), fpn_channels=32, bev_size=(16, 32),
                   cache_images=True, embed_dims=32, num_heads=4, ffn_channels=128,
                   num_lane_queries=30, num_te_queries=10, max_lanes=30, topology_hidden=64,
                   dropout=0.0, lr=1e-3, warmup_iters=40, steps=1200, batch_size=2,
                   eval_batch_size=4, num_workers=0, synthetic_train_segments=48,
                   synthetic_image_scale=0.25)

    def validate(self) -> None:
        """The model's own rules, checked by the harness when the config is built."""
        from harness.config import require

        require(self.embed_dims % self.num_heads == 0, "embed_dims", self.embed_dims,
                f"must be a multiple of num_heads ({self.num_heads})")
        box = self.bev_range
        require(len(box) == 6 and all(box[i] < box[i + 3] for i in range(3)), "bev_range", box,
                "must be 6 values (x, y, z low, then high) with low < high")
        for name in ("num_cameras", "num_heads", "num_lane_queries", "num_te_queries",
                     "num_height_planes", "topology_layers", "max_lanes"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("num_control_points", "num_lane_points"):
            require(getattr(self, name) >= 2, name, getattr(self, name), "must be >= 2")
        require(0 <= self.focal_alpha <= 1, "focal_alpha", self.focal_alpha, "must be in [0, 1]")
