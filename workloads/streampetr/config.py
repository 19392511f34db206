"""StreamPETR configuration: presets `full` (stream_petr_r50_flash_704_bs2_seq_24e) and `smoke`.

`full`: R50 (C4+C5, BN frozen), CPFPN to one stride-16 level, FocalHead (2D aux), 644
learnable + 256 propagated queries, memory 1024, PETR LID position embedding with 64 depths,
6 decoder layers (256-d, 8 heads, FFN 2048), 10 DN groups; AdamW 4e-4 (backbone x0.25),
wd 0.01, clip 35, cosine with 500 linear warmup iterations from 1/3, min lr ratio 1e-3;
batch 2 per device x 8 devices, 24 epochs = 42192 iterations; sub-sequences of half a scene.

`smoke`: the same architecture narrowed and shallowed for two CPU cores: a ResNet-18 layout
(base 16, one block per stage), 64x176 images, 64-d embeddings, 2 decoder layers, 64
learnable + 32 propagated queries, memory 128, 16 depths, 10 DN groups, 1200 steps, on the
synthetic nuScenes (moving objects, 80 trainval scenes x 6 frames, 400x225 JPEGs), without
GridMask and the BEV rotation/scale augmentation; plus one addition that is not in the
original, the ray-distance prior on the cross-attention (`geometry_prior_m`, README).
"""
from __future__ import annotations

import dataclasses

from harness.workload_config import WorkloadConfig
from workloads.datasets.nuscenes_dataset import CLASSES
from workloads.datasets.nuscenes_streampetr import STREAMPETR_CAMS


@dataclasses.dataclass(frozen=True)
class StreamPETRConfig(WorkloadConfig):
    # -- data --
    image_size: tuple[int, int] = (256, 704)  # (H, W) network input
    # published (0.38, 0.55) at the 1600x900 eval scale 0.44, as multiples of the eval scale
    ida_resize_lim: tuple[float, float] = (0.38 / 0.44, 0.55 / 0.44)
    ida_bot_pct_lim: tuple[float, float] = (0.0, 0.0)
    ida_rand_flip: bool = True
    bda_rot_range: tuple[float, float] = (-0.3925, 0.3925)
    bda_scale_range: tuple[float, float] = (0.95, 1.05)
    cams: tuple[str, ...] = STREAMPETR_CAMS
    class_names: tuple[str, ...] = CLASSES
    seq_split_num: int = 2
    grid_mask: bool = True
    # -- backbone / neck --
    backbone_depth: int = 50
    backbone_base_channels: int = 64
    backbone_stage_blocks: tuple[int, ...] | None = None
    # BN statistics frozen as the published config, which starts from pretrained weights:
    # applied only with backbone_weights (frozen random statistics would never be learned).
    backbone_norm_eval: bool = True
    # Starting weights in the originals' layouts (docs/workloads/streampetr.md): a pretrained
    # backbone file and a whole-model checkpoint; "" = random init. Nothing is downloaded.
    backbone_weights: str = ""
    init_checkpoint: str = ""
    with_cp: bool = False  # activation checkpointing of backbone stages and decoder layers (full: on)
    embed_dims: int = 256
    # -- 2D auxiliary FocalHead --
    aux_2d: bool = True
    focal_conv_bias: bool = True  # the FocalHead's shared convs carry a bias, as the original
    # -- 3D head --
    num_query: int = 644
    num_propagated: int = 256
    memory_len: int = 1024
    topk_proposals: int = 256
    use_memory: bool = True  # False: the ablation (no temporal queue: every frame is a first frame)
    depth_num: int = 64
    depth_start: float = 1.0
    position_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    pc_range: tuple[float, ...] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    post_center_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    num_layers: int = 6
    num_heads: int = 8
    ffn_dims: int = 2048
    dropout: float = 0.1
    dn_groups: int = 10
    dn_noise_scale: float = 1.0
    dn_split: float = 0.75
    max_detections: int = 300
    # Not in the original (0 = off, as published): sigma in metres of a ray-distance prior on the
    # cross-attention logits, -(d / sigma)^2 with d the BEV distance from a query's reference
    # point to a token's camera ray. The smoke turns it on: from a random start the learned PETR
    # position embedding does not align queries with rays within a CPU budget (README, StreamPETR).
    geometry_prior_m: float = 0.0
    code_weights: tuple[float, ...] = (2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    # -- loss weights (published) --
    w_cls: float = 2.0
    w_bbox: float = 0.25
    w_enc_cls: float = 2.0
    w_enc_bbox: float = 5.0
    w_enc_iou: float = 2.0
    w_centers2d: float = 10.0
    w_centerness: float = 1.0
    # -- optimisation (the runner reads batch_size, eval_batch_size, steps, grad_clip, num_workers) --
    lr: float = 4e-4
    backbone_lr_mult: float = 0.25
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3
    min_lr_ratio: float = 1e-3
    batch_size: int = 2
    eval_batch_size: int = 1  # streaming eval: one scene played in order
    steps: int = 42192  # 24 x (28130 // 16), counted at the published global batch 16
    num_workers: int = 4
    # -- synthetic data (no --data) --
    synthetic_version: str = "v1.0-mini"
    synthetic_scenes: int = 10
    synthetic_samples_per_scene: int = 40
    synthetic_image_wh: tuple[int, int] = (1600, 900)
    synthetic_objects_per_scene: int = 32
    synthetic_seed: int = 0

    @classmethod
    def full(cls) -> StreamPETRConfig:
        return cls(with_cp=True)  # the published config checkpoints backbone and decoder layers

    @classmethod
    def smoke(cls) -> StreamPETRConfig:
        return cls(
            image_size=(64, 176), backbone_depth=18, backbone_base_channels=16,
            backbone_stage_blocks=(1, 1, 1, 1), backbone_norm_eval=False, embed_dims=64,
            focal_conv_bias=False,  # as measured for its reference rows
            num_query=64, num_propagated=32, memory_len=128, topk_proposals=32, depth_num=16,
            num_layers=2, num_heads=4, ffn_dims=128, dropout=0.0, max_detections=100,
            # The one addition to the architecture (README, StreamPETR): without it the learned
            # position embedding does not tie queries to rays within a CPU budget.
            geometry_prior_m=3.0,
            # No GridMask and no BEV rotation/scale: augmentation that pays off over 24 epochs
            # only slows a short run; the image resize/crop/flip stays.
            grid_mask=False, bda_rot_range=(0.0, 0.0), bda_scale_range=(1.0, 1.0),
            lr=2e-3, warmup_iters=50, batch_size=4, steps=1200, num_workers=0,
            # 80 short scenes (64 train): with 8 long ones the model learns each scene's layout
            # by heart instead of reading the geometry.
            synthetic_version="v1.0-trainval", synthetic_scenes=80, synthetic_samples_per_scene=6,
            synthetic_image_wh=(400, 225))

    def validate(self) -> None:
        """The model's own rules, checked by the harness when the config is built."""
        from harness.config import require

        require(all(side % 16 == 0 for side in self.image_size), "image_size", self.image_size,
                "must be multiples of 16 (the feature stride)", "--set image_size=256,704")
        require(self.embed_dims % self.num_heads == 0, "embed_dims", self.embed_dims,
                f"must be a multiple of num_heads ({self.num_heads})")
        for name in ("pc_range", "position_range", "post_center_range"):
            box = getattr(self, name)
            require(len(box) == 6 and all(box[i] < box[i + 3] for i in range(3)), name, box,
                    "must be 6 values (x, y, z low, then high) with low < high")
        for name in ("num_query", "num_layers", "num_heads", "depth_num", "memory_len"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.num_propagated <= self.memory_len, "num_propagated", self.num_propagated,
                f"must be <= memory_len ({self.memory_len})")
        require(self.geometry_prior_m >= 0, "geometry_prior_m", self.geometry_prior_m,
                "must be >= 0 (0 = off, as published)")
        require(self.topk_proposals <= self.num_query, "topk_proposals", self.topk_proposals,
                f"must be <= num_query ({self.num_query})")
