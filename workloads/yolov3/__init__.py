"""YOLOv3 (Darknet-53) object detection on COCO, after mmdet's yolov3_d53 configuration.

Batches are dicts: images (B, 3, S, S) uint8, boxes/labels as per-image tensor lists,
meta as plain dicts (image id, original size, letterbox scale) that device moves leave
alone. The metric is COCO bbox AP through pycocotools against the val instances json.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import DatasetError, Datasets, UsageError, Workload, hookimpl
from harness.start_weights import WeightLayout
from workloads.datasets.coco import CocoDetection, SyntheticSpec, collate, write_synthetic_coco
from workloads.layers.pretrained import DARKNET_LAYOUTS
from workloads.yolov3.config import YOLOv3Config
from workloads.yolov3.crowded import warn_crowded_image
from workloads.yolov3.loss import yolov3_loss
from workloads.yolov3.metric import coco_bbox_metrics, to_coco_results
from workloads.yolov3.model import YOLOv3
from workloads.yolov3.postprocess import InferConfig, postprocess
from workloads.yolov3.transforms import KeepRatioCocoDetection, PipelineParams, mmdet_train_pipeline
from workloads.yolov3.weights import MMDET_YOLOV3


def _core(model: nn.Module) -> YOLOv3:
    """The YOLOv3 inside DDP (.module) or torch.compile (._orig_mod) wrappers."""
    while not isinstance(model, YOLOv3):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a YOLOv3 model (possibly wrapped), got {type(model).__name__}")
        model = inner
    return model


def _images(batch: dict[str, Any]) -> torch.Tensor:
    # Images travel as uint8 (4x less to copy); mmdet's normalisation is just / 255.
    return batch["images"].float().div_(255.0)


class YOLOv3Workload(Workload):
    name = "yolov3"
    description = "YOLOv3 Darknet-53, COCO bbox AP (mmdet yolov3_d53 config)"
    Config = YOLOv3Config
    metrics = {"AP": "higher", "AP50": "higher", "AP75": "higher"}
    primary_metric = "AP50"
    requires = ("pycocotools",)
    extra = "yolov3"

    def __init__(self, config: YOLOv3Config, user_set: frozenset[str] = frozenset()) -> None:
        super().__init__(config, user_set)  # self.user_set: fields the data may not override
        self._val: CocoDetection | None = None

    @classmethod
    def presets(cls) -> dict[str, YOLOv3Config]:
        return {"smoke": YOLOv3Config.smoke(), "full": YOLOv3Config.full()}

    def synthetic_spec(self) -> SyntheticSpec:
        c = self.config
        return SyntheticSpec(num_classes=c.num_classes, train_images=c.synth_train_images,
                             val_images=c.synth_val_images, min_side=c.synth_min_side,
                             max_side=c.synth_max_side, seed=c.synth_seed)

    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        c = self.config
        if data_root is None:
            root = write_synthetic_coco(Path(cache_dir), self.synthetic_spec())
            source = f"synthetic:{root}"
        else:
            root, source = Path(data_root), str(data_root)
        transform = None
        if c.train_pipeline == "mmdet":
            params = PipelineParams(scale_range=c.scale_range, flip_prob=c.flip_prob)
            transform = functools.partial(mmdet_train_pipeline, p=params)
        train = CocoDetection(root, "train", c.input_size, flip_prob=c.flip_prob, transform=transform)
        warn_crowded_image(train, max(c.input_size, c.scale_range[1]))
        if c.test_resize == "keep_ratio":  # mmdet's test pipeline: keep-ratio resize, pad to 32
            val = KeepRatioCocoDetection(root, "val", c.input_size)
        else:
            val = CocoDetection(root, "val", c.input_size)
        if train.cat_ids != val.cat_ids:
            raise DatasetError(f"{val.ann_path}: categories differ from those of {train.ann_path}")
        from_data = self._classes_from(train)
        self._val = val
        return Datasets(train=train, val=val, collate=collate, source=source, from_data=from_data)

    def _classes_from(self, train: CocoDetection) -> dict[str, str]:
        """num_classes and class_names from the annotation file unless the user set them;
        an explicit value the file contradicts is an error naming the file and field."""
        c, updates, from_data = self.config, {}, {}
        if "num_classes" in self.user_set:
            if train.num_classes != c.num_classes:
                raise DatasetError(f"{train.ann_path}: categories has {train.num_classes} entries but "
                                   f"--set num_classes={c.num_classes}")
        else:
            updates["num_classes"] = train.num_classes
            from_data["num_classes"] = str(train.ann_path)
        names = tuple(train.cat_names)
        if "class_names" in self.user_set:
            if c.class_names != names:
                raise DatasetError(f"{train.ann_path}: categories[].name are {list(names)} but "
                                   f"--set class_names={','.join(c.class_names)}")
        else:
            updates["class_names"] = names
            from_data["class_names"] = str(train.ann_path)
        self.config = dataclasses.replace(c, **updates)
        return from_data

    def weight_layouts(self, part: str) -> tuple[WeightLayout, ...]:
        return DARKNET_LAYOUTS if part == "backbone" else (MMDET_YOLOV3,)

    def build_model(self) -> nn.Module:
        c = self.config
        # BN statistics frozen as mmdet's Darknet, over loaded weights only (frozen random
        # statistics would never be learned).
        return YOLOv3(c.num_classes, c.input_size, c.width, c.depths, c.scale_anchors,
                      backbone_norm_eval=c.backbone_norm_eval and bool(c.backbone_weights))

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.AdamW(model.parameters(), lr=c.lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        c = self.config
        total = max(1, total_steps)
        warmup = min(c.warmup_steps, total)

        def factor(step: int) -> float:
            # mmdet's linear warmup: ratio -> 1 over the warmup iterations, then the decay.
            w = c.warmup_ratio + (1 - c.warmup_ratio) * step / warmup if step < warmup else 1.0
            if c.schedule == "step":
                return w * c.gamma ** sum(step >= m * total for m in c.milestones)
            t = min(1.0, max(0, step - warmup) / max(1, total - warmup))
            return w * (c.gamma + (1 - c.gamma) * 0.5 * (1 + math.cos(math.pi * t)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        maps = model(_images(batch))
        return yolov3_loss(_core(model), maps, batch["boxes"], batch["labels"], self.config.ignore_iou)

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        c = self.config
        cfg = InferConfig(c.conf_thr, c.score_thr, c.nms_iou, c.nms_pre, c.max_per_img)
        return postprocess(_core(model), model(_images(batch)), batch["meta"], cfg)

    # The eval split of predict() (harness eval times the network apart from the decoding,
    # and ONNX export covers exactly forward_for_eval's model call).
    def forward_for_eval(self, model: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        return model(_images(batch))

    def postprocess(self, model: nn.Module, outputs: list[torch.Tensor],
                    batch: dict[str, Any]) -> list[dict[str, Any]]:
        c = self.config
        cfg = InferConfig(c.conf_thr, c.score_thr, c.nms_iou, c.nms_pre, c.max_per_img)
        return postprocess(_core(model), outputs, batch["meta"], cfg)

    def evaluate(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        if self._val is None:
            raise UsageError("yolov3: evaluate() needs datasets() to have loaded the val split")
        results = to_coco_results(predictions, self._val.cat_ids)
        return coco_bbox_metrics(self._val.instances, results)

    def write_predictions(self, predictions: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        """The val detections as a COCO results JSON (image_id, original category_id, bbox
        xywh in original image pixels, score): what COCO.loadRes and COCOeval read."""
        if self._val is None:
            raise UsageError("yolov3: write_predictions() needs datasets() to have loaded the val split")
        path = Path(out_dir) / "detections_val2017_results.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(to_coco_results(predictions, self._val.cat_ids)), encoding="utf-8")
        os.replace(tmp, path)
        return {"format": "coco-results", "path": str(path.resolve()), "split": "val",
                "ground_truth": str(self._val.ann_path.resolve())}

    def samples(self, batch: dict[str, Any]) -> int:
        return int(batch["images"].shape[0])


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [YOLOv3Workload]
