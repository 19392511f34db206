"""BEVDepth / MatrixVT configuration: one frozen dataclass, presets `smoke` and `full`.

`full` is Megvii's published camera-only setting (`bev_depth_lss_r50_256x704_128x128_24e`
family, base_exp.py): ResNet-50 at 256x704, SECONDFPN to stride 16, DepthNet (camera-aware
MLP + SE, 3 BasicBlocks, ASPP, a deformable conv) with d_bound [2, 58, 0.5] (112 bins) and 80
context channels, a 128x128 BEV at 0.8 m, a ResNet-18-style BEV trunk (base 160, strides
1/2/2) with SECONDFPN (4 x 64 ch), a CenterPoint head over 6 task groups, AdamW with the
linear-scaled lr (2e-4 per 64 frames), weight decay 1e-7, MultiStepLR x0.1 at epochs 19 and
23 of 24, grad clip 5, depth loss weight 3.0. Two key frames (`num_keys=2`, the
published 2-key rows: the previous key frame's BEV, aligned to the current ego, stacked
with the current one: 160 BEV channels). The backbone starts from
random weights unless `backbone_weights` names a local torchvision-layout file (the
original loads torchvision's ImageNet R50, which is not fetched here); the stem is frozen
(frozen_stages=0) only then.

`smoke` keeps every component but shrinks widths and resolution so a run trains on two CPU
cores in minutes on the synthetic nuScenes (10 mini scenes x 20 samples, 400x225 JPEGs):
64x176 images, ResNet-18 layout (base 32, one block per stage), 28 depth bins (2 m), a
48x48 BEV of 2 m cells over +-48 m, BEV trunk/neck/head at 32 channels, batch 4, 800 steps,
lr 2e-3. Its decoder uses 3x3 max-pool NMS: the original's circle-NMS radii are tuned for
0.8 m cells and leave adjacent-cell duplicates at 2 m (measured: mAP 0.10 vs 0.14). In
`smoke` the DepthNet's deformable conv is a plain 3x3 conv (`depth_use_dcn=False`); `full`
uses the pure-PyTorch DCN (workloads/layers/deform_conv.py). `view_transform` picks
lift-splat voxel pooling ("lss", BEVDepth) or MatrixVT's ring/ray matrix projection
("matrixvt").
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from harness.workload_config import WorkloadConfig

CLASSES: tuple[str, ...] = (
    "car", "truck", "construction_vehicle", "bus", "trailer", "barrier",
    "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)
# CenterPoint task groups, in class order (a task's labels are a contiguous range).
TASKS: tuple[tuple[str, ...], ...] = (
    ("car",), ("truck", "construction_vehicle"), ("bus", "trailer"), ("barrier",),
    ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone"),
)
CAMERAS: tuple[str, ...] = (
    "CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK",
    "CAM_BACK_RIGHT",
)


@dataclasses.dataclass(frozen=True)
class BEVDepthConfig(WorkloadConfig):
    # -- view transform and geometry --
    view_transform: Literal["lss", "matrixvt"] = "lss"
    image_size: tuple[int, int] = (256, 704)  # network input (H, W) after ida
    num_cams: int = 6  # taken from the data (the cameras every sample has) unless --set
    cams: tuple[str, ...] = CAMERAS  # input camera order; from the data unless --set
    downsample_factor: int = 16
    x_bound: tuple[float, float, float] = (-51.2, 51.2, 0.8)
    y_bound: tuple[float, float, float] = (-51.2, 51.2, 0.8)
    z_bound: tuple[float, float, float] = (-5.0, 3.0, 8.0)
    d_bound: tuple[float, float, float] = (2.0, 58.0, 0.5)
    context_channels: int = 80
    # Key frames per sample (current + previous ones, BEV features stacked): BEVDepth's
    # published rows are 2-key (key_idxes=[-1]); smoke keeps 1 (bevdepth/multikey.py).
    num_keys: int = 2
    # -- image backbone + neck --
    backbone_depth: int = 50
    backbone_base_channels: int = 64
    backbone_stage_blocks: tuple[int, ...] = ()  # () = the depth's standard table
    # A local pretrained ResNet state dict (torchvision layout, or mmdet's with `backbone.`);
    # "" = random init. Nothing is downloaded.
    backbone_weights: str = ""
    init_checkpoint: str = ""  # a whole-model checkpoint (the original's Lightning or a run's)
    # mmdet semantics (0 freezes the stem), as the original with its pretrained R50. Applied
    # only when backbone_weights is given: a randomly initialised stem is never frozen.
    backbone_frozen_stages: int = 0
    backbone_norm_eval: bool = False  # likewise only with backbone_weights
    neck_channels: int = 128  # per level; 4 levels concatenated
    # -- DepthNet --
    depth_mid_channels: int = 512
    depth_use_aspp: bool = True
    depth_use_dcn: bool = True  # False: a plain 3x3 conv where the original has DCN
    # -- MatrixVT --
    matrixvt_mid_channels: int = 512  # HoriConv width
    # NHWC weights and activations. Off in `full` (the original is NCHW); on in `smoke`, where
    # a CPU training step measured 12-17% faster (oneDNN convolutions; lss 0.45 -> 0.37 s,
    # matrixvt 0.46 -> 0.40 s at batch 4).
    channels_last: bool = False
    # -- BEV trunk, neck, CenterPoint head --
    bev_depth: int = 18
    bev_base_channels: int = 160
    bev_stage_blocks: tuple[int, ...] = ()
    bev_neck_channels: int = 64  # per level; 4 levels concatenated
    head_share_channels: int = 64
    head_conv_channels: int = 64
    head_final_kernel: int = 3  # kernel of the SeparateHead convs (BEVDepth: 3; mmdet3d default 1)
    # -- targets and losses --
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    max_objs: int = 500
    # L1 weights of (reg 2, height, dim 3, rot 2, vel 2); () = the original's for num_keys:
    # its 1-key experiments halve the velocity terms (velocity from one frame is barely
    # observable), its 2-key experiment weighs them fully.
    code_weights: tuple[float, ...] = ()
    bbox_loss_weight: float = 0.25
    depth_loss_weight: float = 3.0
    # -- decoding --
    score_threshold: float = 0.1
    max_num: int = 500  # top-K per task before NMS
    nms_type: Literal["circle", "maxpool"] = "circle"
    nms_radius: tuple[float, ...] = (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)  # squared metres
    post_max_size: int = 83
    post_center_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    # -- optimisation (the runner reads batch_size, eval_batch_size, steps, grad_clip,
    #    num_workers) --
    lr_per_sample: float = 2e-4 / 64  # lr = lr_per_sample * batch_size * world_size
    weight_decay: float = 1e-7
    lr_milestones: tuple[float, ...] = (19 / 24, 23 / 24)  # fractions of the run
    lr_gamma: float = 0.1
    # Model EMA evaluated instead of the raw weights (harness/ema.py; 0: off). The `_ema`
    # experiments (MatrixVT's base) keep one with decay 0.999 (bevdepth/callbacks/ema.py).
    ema_decay: float = 0.0
    # The original reads images with PIL (RGB) and normalises them with mmcv's to_rgb=True,
    # which swaps them to BGR before subtracting the RGB-ordered mean: its network sees that.
    # `full` does the same (a released checkpoint sees what it was trained on); the smoke
    # preset keeps plain RGB, as its rows were measured.
    swap_rb: bool = True
    # CBGS class-balanced resampling of the train split (workloads/datasets/cbgs.py), as the
    # original's data_use_cbgs (MatrixVT's experiment and the `_cbgs` BEVDepth ones).
    use_cbgs: bool = False
    batch_size: int = 8
    eval_batch_size: int = 8
    # Steps convention (README): optimizer steps at the published global batch, 8 GPUs x 8 =
    # 64: 24 epochs of nuScenes train (28130 frames) = 10548 steps. On fewer devices keep the
    # global batch with --grad-accum (batch_size x grad_accum x nproc = 64).
    steps: int = 24 * 28130 // 64
    grad_clip: float = 5.0
    num_workers: int = 4
    # -- data: augmentation (train only) --
    # Source camera image (W, H): BEVDepth's ida_aug_conf H, W; taken from the data unless --set.
    source_image_wh: tuple[int, int] = (1600, 900)
    # Absolute resize of the source image, as BEVDepth: (0.386, 0.55) for 1600x900 -> 256x704
    # (eval scale 0.44). Unless --set, datasets() derives it from the data's image size by
    # BEVDepth's rule (0.386, 0.55) x max(fH/H, fW/W) / 0.44 (bevdepth/data_config.py).
    ida_resize_lim: tuple[float, float] = (0.386, 0.55)
    ida_rot_lim: tuple[float, float] = (-5.4, 5.4)
    ida_rand_flip: bool = True
    ida_bot_pct_lim: tuple[float, float] = (0.0, 0.0)
    bda_rot_lim: tuple[float, float] = (-22.5, 22.5)
    bda_scale_lim: tuple[float, float] = (0.95, 1.05)
    bda_flip_dx_ratio: float = 0.5
    bda_flip_dy_ratio: float = 0.5
    # -- data: synthetic nuScenes written when no --data is given --
    synthetic_version: str = "v1.0-mini"
    synthetic_scenes: int = 10
    synthetic_samples_per_scene: int = 40
    synthetic_image_wh: tuple[int, int] = (1600, 900)  # raw camera image (W, H)
    synthetic_objects_per_scene: int = 32
    synthetic_seed: int = 0

    def validate(self) -> None:
        """The model's own rules, checked by the harness when the config is built (the
        generic finite/non-negative checks by field name come first)."""
        from harness.config import require

        df = self.downsample_factor
        require(len(self.code_weights) in (0, 10), "code_weights", self.code_weights,
                "must be 10 values (reg 2, height, dim 3, rot 2, vel 2) or empty")
        require(df in (4, 8, 16, 32), "downsample_factor", df,
                "must be 4, 8, 16 or 32 (a ResNet stage's stride)")
        require(all(side % df == 0 for side in self.image_size), "image_size", self.image_size,
                f"must be multiples of downsample_factor {df} (the depth net's stride)",
                "--set image_size=256,704")
        for name in ("x_bound", "y_bound", "z_bound", "d_bound"):
            lo, hi, step = getattr(self, name)
            require(lo < hi and step > 0, name, getattr(self, name),
                    "must be (low, high, step) with low < high and step > 0")
        require(self.num_depth_bins >= 1, "d_bound", self.d_bound, "must give >= 1 depth bin")
        require(min(self.bev_size) >= 1, "x_bound", self.x_bound, "must give >= 1 BEV cell")
        require(1 <= self.num_cams <= len(self.cams), "num_cams", self.num_cams,
                f"must be in 1..{len(self.cams)} (the cameras in cams)")
        require(self.num_keys >= 1, "num_keys", self.num_keys, "must be >= 1")
        require(0 < self.gaussian_overlap < 1, "gaussian_overlap", self.gaussian_overlap,
                "must be in (0, 1)")
        require(0 <= self.score_threshold <= 1, "score_threshold", self.score_threshold,
                "must be in [0, 1]")
        require(self.lr_gamma > 0, "lr_gamma", self.lr_gamma, "must be > 0")
        require(all(0 <= m <= 1 for m in self.lr_milestones) and
                list(self.lr_milestones) == sorted(self.lr_milestones), "lr_milestones",
                self.lr_milestones, "must be ascending fractions of the steps, in [0, 1]")
        require(len(self.post_center_range) == 6, "post_center_range", self.post_center_range,
                "must be 6 values (x, y, z low, then high)")

    def box_code_weights(self) -> tuple[float, ...]:
        if self.code_weights:
            return tuple(self.code_weights)
        return (1.0,) * 8 + ((1.0, 1.0) if self.num_keys > 1 else (0.5, 0.5))

    @property
    def num_depth_bins(self) -> int:
        lo, hi, step = self.d_bound
        return int((hi - lo) / step)

    @property
    def bev_size(self) -> tuple[int, int]:
        """(X cells, Y cells)."""
        return (int((self.x_bound[1] - self.x_bound[0]) / self.x_bound[2]),
                int((self.y_bound[1] - self.y_bound[0]) / self.y_bound[2]))

    @classmethod
    def full(cls) -> BEVDepthConfig:
        return cls()

    @classmethod
    def smoke(cls) -> BEVDepthConfig:
        return cls(
            image_size=(64, 176),
            x_bound=(-48.0, 48.0, 2.0),
            y_bound=(-48.0, 48.0, 2.0),
            d_bound=(2.0, 58.0, 2.0),
            context_channels=32,
            num_keys=1,
            swap_rb=False,
            backbone_depth=18,
            backbone_base_channels=32,
            backbone_stage_blocks=(1, 1, 1, 1),
            backbone_frozen_stages=-1,
            neck_channels=32,
            depth_mid_channels=64,
            depth_use_dcn=False,
            matrixvt_mid_channels=64,
            channels_last=True,
            bev_base_channels=32,
            bev_stage_blocks=(1, 1, 1),
            bev_neck_channels=32,
            head_share_channels=32,
            head_conv_channels=32,
            nms_type="maxpool",
            lr_per_sample=2e-3 / 4,
            batch_size=4,
            eval_batch_size=4,
            steps=800,
            num_workers=0,
            synthetic_scenes=10,
            synthetic_samples_per_scene=20,
            synthetic_image_wh=(400, 225),
            source_image_wh=(400, 225),
        )
