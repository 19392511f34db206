"""YOLOv3 configuration: one frozen dataclass, presets `smoke` and `full`."""
from __future__ import annotations

import dataclasses
from typing import Literal

from harness.workload_config import WorkloadConfig

# mmdet yolov3_d53_8xb8-ms-608-273e_coco: 273 epochs of COCO train2017 (117,266 images with
# annotations) at 64 images per iteration (8 GPUs x 8) = 1,833 iterations per epoch.
MMDET_EPOCHS = 273
MMDET_ITERS_PER_EPOCH = 1833


@dataclasses.dataclass(frozen=True)
class YOLOv3Config(WorkloadConfig):
    # -- model --
    num_classes: int = 80  # taken from the annotation file unless --set
    class_names: tuple[str, ...] = ()  # the categories' names in id order (from the data)
    input_size: int = 416  # square letterbox side; must be a multiple of 32
    width: float = 1.0  # channel multiplier of Darknet, neck and head
    depths: tuple[int, ...] = (1, 2, 8, 8, 4)  # residual blocks per Darknet stage
    scale_anchors: bool = False  # scale the 416-px COCO anchors by input_size / 416
    # A local pretrained Darknet state dict (mmdet's darknet53 layout or this project's);
    # "" = random init. Nothing is downloaded.
    backbone_weights: str = ""
    init_checkpoint: str = ""  # a whole-model checkpoint (mmdetection's yolov3_d53 or a run's)
    backbone_norm_eval: bool = True  # mmdet's Darknet default; applied with backbone_weights only
    # -- data --
    flip_prob: float = 0.5
    # "mmdet": yolov3_d53_mstrain-608's training pipeline (Expand, MinIoURandomCrop,
    # multi-scale keep-ratio resize over train_scale_range, flip, PhotoMetricDistortion,
    # /255, pad to 32; yolov3/transforms.py); "letterbox": flip + square letterbox only.
    train_pipeline: Literal["mmdet", "letterbox"] = "mmdet"
    # () = (320, input_size), as mmdet's configs: yolov3_d53_mstrain-608 trains at 320-608,
    # mstrain-416 at 320-416, yolov3_d53_320 at 320 only.
    train_scale_range: tuple[int, ...] = ()
    # Evaluation input. "keep_ratio": mmdet's yolov3_d53 test pipeline (Resize to
    # (input_size, input_size) keeping the aspect ratio, pad to a multiple of 32 at the
    # bottom/right; a batch pads to its largest image; yolov3/transforms.py);
    # "letterbox": the square input_size x input_size letterbox (the smoke preset's rows).
    test_resize: Literal["keep_ratio", "letterbox"] = "keep_ratio"
    synth_train_images: int = 320  # synthetic data (used when no --data is given)
    synth_val_images: int = 100
    synth_min_side: int = 96
    synth_max_side: int = 224
    synth_seed: int = 0
    # -- fields the runner reads --
    batch_size: int = 8
    eval_batch_size: int = 8
    steps: int = MMDET_EPOCHS * MMDET_ITERS_PER_EPOCH
    grad_clip: float | None = 35.0
    num_workers: int = 4
    # -- optimizer and schedule --
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD momentum, or AdamW beta1
    weight_decay: float = 5e-4
    warmup_steps: int = 2000
    warmup_ratio: float = 0.1  # linear warmup starts at lr * warmup_ratio
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[float, ...] = (218 / 273, 246 / 273)  # fractions of total steps
    gamma: float = 0.1  # step decay factor; for cosine, the final lr fraction
    # -- loss and test --
    ignore_iou: float = 0.5
    conf_thr: float = 0.005
    score_thr: float = 0.05
    nms_iou: float = 0.45
    nms_pre: int = 1000
    max_per_img: int = 100

    def validate(self) -> None:
        """The model's own rules, checked by the harness when the config is built (the
        generic finite/non-negative checks by field name come first)."""
        from harness.config import require

        require(self.input_size % 32 == 0, "input_size", self.input_size,
                "must be a multiple of 32 (the coarsest stride)", "--set input_size=416")
        require(self.width > 0, "width", self.width, "must be > 0")
        require(len(self.depths) == 5 and min(self.depths, default=0) >= 1, "depths",
                self.depths, "must be 5 Darknet stages of >= 1 blocks each")
        scales = self.train_scale_range
        require(not scales or (len(scales) == 2 and 0 < scales[0] <= scales[1]),
                "train_scale_range", scales, "must be () or two sizes (low, high), "
                "0 < low <= high")
        require(self.synth_min_side <= self.synth_max_side, "synth_min_side",
                self.synth_min_side, f"must be <= synth_max_side ({self.synth_max_side})")
        require(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        require(self.gamma > 0, "gamma", self.gamma, "must be > 0")
        require(all(0 <= m <= 1 for m in self.milestones) and
                list(self.milestones) == sorted(self.milestones), "milestones",
                self.milestones, "must be ascending fractions of the steps, in [0, 1]")
        for name in ("ignore_iou", "conf_thr", "score_thr", "nms_iou"):
            value = getattr(self, name)
            require(0 <= value <= 1, name, value, "must be in [0, 1]")
        for name in ("nms_pre", "max_per_img"):
            value = getattr(self, name)
            require(value >= 1, name, value, "must be >= 1")

    @property
    def scale_range(self) -> tuple[int, int]:
        lo, hi = self.train_scale_range or (min(320, self.input_size), self.input_size)
        return int(lo), int(hi)

    @classmethod
    def full(cls) -> YOLOv3Config:
        """mmdet's published yolov3_d53 COCO configuration: Darknet-53, 80 classes,
        8 images per device, SGD lr 1e-3 (momentum 0.9, wd 5e-4), linear warmup over
        2000 iterations from 0.1x, x0.1 at epochs 218 and 246 of 273, grad clip 35.
        Training pipeline as mmdet's (train_pipeline="mmdet": Expand, MinIoURandomCrop,
        multi-scale keep-ratio resize from 320 to the test size, flip, PhotoMetricDistortion,
        /255), as mmdet's yolov3_d53_{320, mstrain-416, mstrain-608} configs. Input 416 by
        default; pick 320/416/608 with --set input_size=. mmdet starts from an ImageNet-pretrained
        Darknet-53; here the backbone starts from scratch."""
        return cls()

    @classmethod
    def smoke(cls) -> YOLOv3Config:
        """The same architecture narrowed (width 0.25) and shallowed (1, 1, 2, 2, 1 blocks)
        at a 160-px input with anchors scaled to it, on 4 synthetic shape classes; trains on
        2 CPU cores in a few minutes. Departures from `full` chosen for speed of
        convergence, not fidelity: AdamW at lr 2e-3 with a short linear warmup and a cosine
        decay (the published SGD 1e-3 schedule needs far more steps than a smoke run has),
        and the lighter letterbox + flip training pipeline at the fixed 160-px input."""
        return cls(
            num_classes=4, input_size=160, width=0.25, depths=(1, 1, 2, 2, 1), scale_anchors=True,
            train_pipeline="letterbox", test_resize="letterbox",
            synth_train_images=320, synth_val_images=100,
            batch_size=16, eval_batch_size=25, steps=400, grad_clip=10.0, num_workers=0,
            optimizer="adamw", lr=2e-3, weight_decay=5e-4, warmup_steps=50, schedule="cosine",
            gamma=0.05,
        )
