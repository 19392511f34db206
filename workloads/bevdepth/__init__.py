"""BEVDepth and MatrixVT: camera-only 3D detection on nuScenes (Megvii-BaseDetection/BEVDepth).

Two workloads over one model family: `bevdepth` (lift-splat view transform with
pure-PyTorch voxel pooling) and `matrixvt` (MatrixVT's ring/ray matrix projection); either
can switch with `--set view_transform=lss|matrixvt`. Batches follow the agreed format of
workloads/datasets/nuscenes_dataset.py (imgs (B, 6, 3, H, W), the 4x4 calibration and
augmentation matrices, per-sample GT lists, lidar depth labels, metas). Losses are logged
as `loss_heatmap`, `loss_bbox` (CenterPoint) and `loss_depth` (BEVDepth's depth supervision).
The metric is nuScenes detection (mAP, NDS and the five TP errors) via nuscenes-devkit.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import DatasetError, Datasets, UsageError, Workload, hookimpl
from harness.start_weights import WeightLayout
from workloads.bevdepth.config import CLASSES, BEVDepthConfig
from workloads.bevdepth.data_config import config_from_data
from workloads.bevdepth.head import build_targets
from workloads.bevdepth.loss import depth_loss, detection_losses
from workloads.bevdepth.model import BEVDepth
from workloads.bevdepth.multikey import MultiKeyDataset
from workloads.bevdepth.postprocess import decode
from workloads.bevdepth.view_transform import MAT_KEYS
from workloads.bevdepth.weights import BEVDEPTH_LIGHTNING
from workloads.layers.pretrained import RESNET_LAYOUTS

NUSCENES_VERSIONS = ("v1.0-trainval", "v1.0-mini")


def _mats(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in (*MAT_KEYS, "sensor2sensor_mats") if k in batch}


class BEVDepthWorkload(Workload):
    name = "bevdepth"
    description = ("BEVDepth R50 256x704 (lift-splat, depth-supervised), nuScenes detection NDS "
                   "(Megvii bev_depth_lss_r50_256x704_128x128_24e)")
    Config = BEVDepthConfig
    metrics = {"mAP": "higher", "NDS": "higher", "mATE": "lower", "mASE": "lower",
               "mAOE": "lower", "mAVE": "lower", "mAAE": "lower"}
    primary_metric = "NDS"
    requires = ("nuscenes",)
    extra = "bevdepth"
    view_transform = "lss"

    def __init__(self, config: BEVDepthConfig, user_set: frozenset[str] = frozenset()) -> None:
        super().__init__(config, user_set)  # self.user_set: fields the data may not override
        self._val_infos: list[dict] | None = None
        self._ground_truth: dict[str, str] = {}

    full_num_keys = 2  # bev_depth_lss_r50_256x704_128x128_24e_2key

    @classmethod
    def presets(cls) -> dict[str, BEVDepthConfig]:
        full = dataclasses.replace(BEVDepthConfig.full(), num_keys=cls.full_num_keys)
        return {name: dataclasses.replace(cfg, view_transform=cls.view_transform)
                for name, cfg in (("smoke", BEVDepthConfig.smoke()), ("full", full))}

    # -- data --
    def data_params(self) -> Any:
        from workloads.datasets.nuscenes import NuScenesDataParams

        c = self.config
        return NuScenesDataParams(
            final_dim=c.image_size, resize_lim=c.ida_resize_lim, bot_pct_lim=c.ida_bot_pct_lim,
            rot_lim=c.ida_rot_lim, rand_flip=c.ida_rand_flip, bda_rot_lim=c.bda_rot_lim,
            bda_scale_lim=c.bda_scale_lim, bda_flip_dx_ratio=c.bda_flip_dx_ratio,
            bda_flip_dy_ratio=c.bda_flip_dy_ratio, classes=CLASSES, cams=tuple(c.cams),
            swap_rb=c.swap_rb,
            return_depth=True)

    def synthetic_root(self, cache_dir: Path) -> Path:
        c = self.config
        w, h = c.synthetic_image_wh
        return Path(cache_dir) / (
            f"nuscenes-synth-{c.synthetic_version}-seed{c.synthetic_seed}-"
            f"{c.synthetic_scenes}x{c.synthetic_samples_per_scene}-{w}x{h}-"
            f"obj{c.synthetic_objects_per_scene}")

    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        from workloads.datasets.nuscenes import (
            NuScenesDetDataset,
            collate_nuscenes,
            info_files,
            load_or_create_infos,
            write_synthetic_nuscenes,
        )

        c = self.config
        if data_root is None:
            root = write_synthetic_nuscenes(
                self.synthetic_root(cache_dir), version=c.synthetic_version, seed=c.synthetic_seed,
                num_scenes=c.synthetic_scenes, samples_per_scene=c.synthetic_samples_per_scene,
                image_size=c.synthetic_image_wh, objects_per_scene=c.synthetic_objects_per_scene)
            version, source = c.synthetic_version, f"synthetic:{root}"
        else:
            root, source = Path(data_root), str(data_root)
            version = self._version_of(root)
        infos = load_or_create_infos(root, version, cache_dir)
        for split in ("train", "val"):
            if not infos.get(split):
                raise DatasetError(f"{root}: no samples in the {split} split "
                                   f"(nuscenes_infos_{split}.pkl)")
        # the infos may live in the cache (a read-only root): name the file actually read
        train_infos = info_files(root, version, cache_dir)[0].get("train", root / "nuscenes_infos_train.pkl")
        self.config, from_data = config_from_data(
            c, self.user_set, infos["train"] + infos["val"], root, train_infos)
        params = self.data_params()
        self._val_infos = infos["val"]
        self._ground_truth = {"dataroot": str(Path(root).resolve()), "version": version,
                              "eval_set": "mini_val" if version == "v1.0-mini" else "val"}
        if self.config.num_keys > 1:
            keys = self.config.num_keys
            train = MultiKeyDataset(infos["train"], root, params, train=True, num_keys=keys)
            val = MultiKeyDataset(infos["val"], root, params, train=False, num_keys=keys)
        else:
            train = NuScenesDetDataset(infos["train"], root, params, train=True)
            val = NuScenesDetDataset(infos["val"], root, params, train=False)
        if self.config.use_cbgs:
            from workloads.datasets.cbgs import ClassBalanced, class_balanced_indices

            train = ClassBalanced(train, class_balanced_indices(infos["train"], CLASSES))
        return Datasets(train=train, val=val, collate=collate_nuscenes, source=source, from_data=from_data)

    @staticmethod
    def _version_of(root: Path) -> str:
        if all((root / f"nuscenes_infos_{s}.pkl").is_file() for s in ("train", "val")):
            for version in NUSCENES_VERSIONS:
                if (root / version).is_dir():
                    return version
            return NUSCENES_VERSIONS[0]  # prepared infos only: the version is not needed
        for version in NUSCENES_VERSIONS:
            if (root / version).is_dir():
                return version
        raise DatasetError(f"{root}: not a nuScenes root (no {' or '.join(NUSCENES_VERSIONS)} "
                           "folder) and no nuscenes_infos_train.pkl / nuscenes_infos_val.pkl")

    # -- model and optimisation --
    def weight_layouts(self, part: str) -> tuple[WeightLayout, ...]:
        return RESNET_LAYOUTS if part == "backbone" else (BEVDEPTH_LIGHTNING,)

    def backbone(self, model: nn.Module) -> nn.Module | None:
        return model.get_submodule("encoder.backbone")

    def build_model(self) -> nn.Module:
        model = BEVDepth(self.config)
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        world = (torch.distributed.get_world_size()
                 if torch.distributed.is_available() and torch.distributed.is_initialized() else 1)
        lr = c.lr_per_sample * c.batch_size * world  # the original's linear scaling rule
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, weight_decay=c.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        c = self.config
        milestones = sorted({max(1, round(f * total_steps)) for f in c.lr_milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=c.lr_gamma)

    # -- steps --
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        preds, depth = model(batch["imgs"], _mats(batch))
        targets = build_targets(batch["gt_boxes"], batch["gt_labels"], self.config,
                                device=batch["imgs"].device)
        terms = detection_losses(preds, targets, self.config, self.strategy.mean_across_ranks)
        if "depth_labels" not in batch:
            raise UsageError("bevdepth: training batches need 'depth_labels' (lidar depth)")
        terms["loss_depth"] = depth_loss(batch["depth_labels"], depth, self.config)
        return terms

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        preds, _ = model(batch["imgs"], _mats(batch))
        out = decode(preds, self.config)
        for det, meta in zip(out, batch["metas"]):
            det["sample_token"] = meta["sample_token"]
        return out

    def evaluate(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        from workloads.datasets.nuscenes_metric import evaluate_detections

        if self._val_infos is None:
            raise UsageError("bevdepth: evaluate() needs datasets() to have loaded the val split")
        return evaluate_detections(predictions, self._val_infos, class_names=CLASSES)

    def write_predictions(self, predictions: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        """The nuScenes detection submission JSON ({"meta", "results": {sample_token: [box
        records in the global frame, with attributes]}}) that the devkit's DetectionEval
        reads; built from the same records as evaluate(), so both see identical boxes."""
        from workloads.datasets.nuscenes_metric import to_nuscenes_submission

        if self._val_infos is None:
            raise UsageError("bevdepth: write_predictions() needs datasets() to have loaded the val split")
        submission = to_nuscenes_submission(predictions, self._val_infos, class_names=CLASSES)
        path = Path(out_dir) / "results_nusc.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(submission), encoding="utf-8")
        os.replace(tmp, path)
        return {"format": "nuscenes-detection", "path": str(path.resolve()), "split": "val",
                "ground_truth": dict(self._ground_truth)}

    def samples(self, batch: dict[str, Any]) -> int:
        return int(batch["imgs"].shape[0])


class MatrixVTWorkload(BEVDepthWorkload):
    name = "matrixvt"
    description = ("MatrixVT (ring/ray matrix view transform) on the BEVDepth R50 256x704 "
                   "model, nuScenes detection NDS")
    view_transform = "matrixvt"
    # Megvii's MatrixVT experiment builds on bev_depth_lss_r50_256x704_128x128_24e_ema: 1 key.
    full_num_keys = 1

    @classmethod
    def presets(cls) -> dict[str, BEVDepthConfig]:
        # ...whose optimizer is AdamW at a constant lr (no MultiStepLR) with model EMA 0.999
        # (exps/nuscenes/mv/bev_depth_lss_r50_256x704_128x128_24e_ema.py, use_ema=True).
        presets = super().presets()
        presets["full"] = dataclasses.replace(presets["full"], lr_milestones=(), ema_decay=0.999,
                                              use_cbgs=True)  # MatrixVT_Exp.data_use_cbgs
        return presets


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [BEVDepthWorkload, MatrixVTWorkload]
