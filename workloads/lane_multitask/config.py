"""Configuration of the lanes workload: one frozen dataclass, presets `smoke` and `full`."""
from __future__ import annotations

import dataclasses
from typing import Literal

from harness.workload_config import WorkloadConfig

# GANet-S (configs/tusimple/final_exp_res18_s8.py): 200 epochs of the 3,626 TuSimple
# training frames at 32 per iteration (113.3 iterations per epoch), steps at epochs 50, 100.
GANET_EPOCHS = 200
GANET_ITERS_PER_EPOCH = 3626 / 32


@dataclasses.dataclass(frozen=True)
class LanesConfig(WorkloadConfig):
    # -- encoder (workloads/layers/resnet.py) and FPN to stride 8 --
    depth: int = 18
    base_channels: int = 64
    stage_blocks: tuple[int, ...] = ()  # () = the depth's own table
    frozen_stages: int = -1  # GANet freezes stage 1 of an ImageNet ResNet; here from scratch
    # Starting weights in the originals' layouts (docs/workloads/lanes.md): a pretrained
    # backbone file and a whole-model checkpoint; "" = random init. Nothing is downloaded.
    backbone_weights: str = ""
    init_checkpoint: str = ""
    fpn_channels: int = 64
    # GANet's neck (cfg:69-86, dcn_fpn.py; model.py, ganet_neck.py). Off by default (smoke);
    # `full` turns them on. The C5 attention encoder's widths and query/key reduction:
    c5_attention: bool = False
    c5_attn_channels: tuple[int, ...] = (64, 64)  # trans_cfg attn_out_dims
    c5_attn_reduction: int = 4  # trans_cfg ratios
    # The LFA (LanePointsConv) at stride 8: points per location (dcn_point_num[0]), its conv
    # width (dconv_cfg None -> 256), stacked convs, the points' gradient scale into the DCN
    lfa: bool = False
    lfa_points: int = 7
    lfa_channels: int = 256
    lfa_stacked_convs: int = 3
    lfa_gradient_mul: float = 0.1
    # its auxiliary targets: samples per lane at stride 8 (sample_per_lane[0] =
    # sample_gt_points[0]) and CollectLanePoints' max_lane_num
    lfa_lane_samples: int = 41
    lfa_max_lanes: int = 6
    fpn_out_bn_relu: bool = True  # GANet's fpn_convs have neither (norm_cfg/act_cfg None)
    head_channels: int = 64  # GANet's CtnetHead head_conv (= branch_in_channels)
    seg_channels: int = 32
    # -- input: crop rows [crop_top * H, H) of the source frame, resize to input_size --
    input_size: tuple[int, int] = (320, 800)  # (H, W), multiples of 8
    crop_top: float = 160 / 720  # GANet's crop_bbox [0, 160, 1280, 720] as a fraction of H
    source_size: tuple[int, int] = (1280, 720)  # (W, H) of the frames; read from the data
    hm_stride: int = 8
    # GANet normalises BGR with these (img_norm_cfg, to_rgb=False)
    mean_bgr: tuple[float, float, float] = (75.3, 76.6, 77.6)
    std_bgr: tuple[float, float, float] = (50.5, 53.8, 54.3)
    flip_prob: float = 0.5
    # GANet's photometric and affine train augmentations (cfg:114-154; augment.py)
    augment: bool = False
    # where the drivable masks come from: resolved from the data ("files", "derived", "mixed")
    drivable_source: Literal["auto", "files", "derived", "mixed"] = "auto"
    cache_decoded: bool = False  # keep decoded, resized frames in memory (small datasets)
    # -- targets (GANet CollectLanePoints) --
    radius: int = 2  # keypoint Gaussian radius, heatmap cells
    root_radius: int = 4  # start-point Gaussian radius
    joint_weights: tuple[float, float, float] = (1.0, 0.4, 0.2)
    # -- loss: GANet's loss_weights plus the drivable term --
    weight_center: float = 0.0
    weight_point: float = 1.0
    weight_error: float = 1.0
    weight_offset: float = 0.5
    weight_aux: float = 0.2  # 4_smoothl1loss, the LFA's points (only with lfa)
    weight_seg_bce: float = 1.0
    weight_seg_dice: float = 1.0
    loss_weighting: Literal["fixed", "uncertainty"] = "fixed"
    # -- decoding (GANet configs/tusimple/test_common_s8.py) --
    kpt_thr: float = 0.3
    root_thr: float = 1.0
    cluster_thr: float = 4.0  # cluster_by_center_thr
    points_thr: int = 7  # a lane needs more than this many points
    mask_thr: float = 0.5
    # -- synthetic data (used when no --data is given) --
    synth_train_frames: int = 160
    synth_test_frames: int = 40
    synth_seed: int = 0
    # -- fields the runner reads --
    batch_size: int = 32
    eval_batch_size: int = 8
    steps: int = round(GANET_EPOCHS * GANET_ITERS_PER_EPOCH)
    grad_clip: float | None = None
    num_workers: int = 4
    # -- optimizer and schedule (GANet: Adam 1e-4, constant warmup 100 iters at 1/3, x0.1 at
    # epochs 50 and 100 of 200) --
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    warmup_ratio: float = 1 / 3
    milestones: tuple[float, ...] = (50 / 200, 100 / 200)  # fractions of total steps
    gamma: float = 0.1

    def validate(self) -> None:
        """The model's own rules, checked by the harness when the config is built (the
        generic finite/non-negative checks by field name come first)."""
        from harness.config import require

        require(self.hm_stride == 8, "hm_stride", self.hm_stride,
                "must be 8 (the FPN's output stride)", "--set hm_stride=8")
        h, w = self.input_size
        require(h % self.hm_stride == 0 and w % self.hm_stride == 0, "input_size",
                self.input_size, f"must be multiples of hm_stride {self.hm_stride}",
                "--set input_size=320,800")
        require(0 <= self.crop_top < 1, "crop_top", self.crop_top, "must be in [0, 1)")
        for name in ("radius", "root_radius", "points_thr"):
            value = getattr(self, name)
            require(value >= 1, name, value, "must be >= 1")
        for name in ("kpt_thr", "mask_thr"):
            value = getattr(self, name)
            require(0 <= value <= 1, name, value, "must be in [0, 1]")
        require(min(self.std_bgr) > 0, "std_bgr", self.std_bgr, "must be > 0")
        require(self.lfa_points % 2 == 1, "lfa_points", self.lfa_points, "must be odd")
        for name in ("lfa_channels", "lfa_stacked_convs", "lfa_max_lanes", "c5_attn_reduction"):
            value = getattr(self, name)
            require(value >= 1, name, value, "must be >= 1")
        require(self.lfa_lane_samples >= 2, "lfa_lane_samples", self.lfa_lane_samples,
                "must be >= 2")
        require(len(self.c5_attn_channels) >= 1 and all(
            c % 4 == 0 and c % self.c5_attn_reduction == 0 for c in self.c5_attn_channels),
            "c5_attn_channels", self.c5_attn_channels,
            "must be one or more widths divisible by 4 (the position code) and c5_attn_reduction")
        require(self.gamma > 0, "gamma", self.gamma, "must be > 0")
        require(all(0 <= m <= 1 for m in self.milestones) and
                list(self.milestones) == sorted(self.milestones), "milestones",
                self.milestones, "must be ascending fractions of the steps, in [0, 1]")

    @property
    def hm_size(self) -> tuple[int, int]:
        return self.input_size[0] // self.hm_stride, self.input_size[1] // self.hm_stride

    @classmethod
    def full(cls) -> LanesConfig:
        """GANet-S on TuSimple: ResNet-18, GANet's neck (the attention encoder on C5, FPN to
        stride 8 with 64 channels, the LFA with its auxiliary loss, offset heads on the pre-LFA
        map, a plain output conv), 320x800 crop input, 40x100 heatmaps, GANet's losses and
        photometric/affine augmentations, Adam 1e-4 with its step schedule, batch 32. Not
        reproduced: the ImageNet initialisation (random unless backbone_weights is set), the
        stage-1 freeze and norm_eval."""
        return cls(c5_attention=True, lfa=True, fpn_out_bn_relu=False, augment=True)

    @classmethod
    def smoke(cls) -> LanesConfig:
        """The same architecture narrowed (base 16 channels, one block per stage, 32-ch FPN)
        at a 160x400 crop input (20x50 heatmaps), on synthetic road scenes; trains on 2 CPU
        cores in a few minutes. Departures chosen for speed of convergence: lr 2e-3 and a
        cosine-free step schedule over far fewer steps. GANet's C5 attention, LFA (and its
        auxiliary loss) and photometric/affine augmentations stay off (the defaults), and the
        output conv keeps BN + ReLU: the smoke rows were measured so."""
        return cls(
            base_channels=16, stage_blocks=(1, 1, 1, 1), fpn_channels=32, head_channels=32,
            seg_channels=16, input_size=(160, 400), cache_decoded=True,
            synth_train_frames=160, synth_test_frames=40,
            batch_size=8, eval_batch_size=8, steps=300, num_workers=0,
            lr=2e-3, warmup_steps=20, milestones=(0.8,),
        )
