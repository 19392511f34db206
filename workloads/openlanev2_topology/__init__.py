"""OpenLane-V2 topology (`openlanev2`): lane centerlines, traffic elements and their topology.

The simple baseline of OpenDriveLab/OpenLane-V2 (`configs/baseline.py`, the model the seed's
DeepSpeed script trains), in plain PyTorch: see config.py for the presets, model.py/heads.py
for the network and loss.py for the losses, logged under the seed's names (lc_loss_cls,
lc_loss_bbox, te_loss_cls, te_loss_bbox, te_loss_iou, topology_lclc_loss_cls,
topology_lcte_loss_cls). Data is the subset_A layout (workloads/datasets/openlanev2.py); the
metric is the official devkit's `openlanev2.centerline.evaluation.evaluate` (OLS v2.1, i.e.
the v1.1 topology scoring) on the val collection, fed the official submission dict, which
`write_predictions` also writes to `<run>/predictions/`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import DatasetError, Datasets, MissingExtra, UsageError, Workload, hookimpl
from harness.start_weights import WeightLayout
from workloads.datasets.openlanev2_devkit import INSTALL_COMMAND, centerline_devkit
from workloads.layers.pretrained import RESNET_LAYOUTS
from workloads.openlanev2_topology.config import OpenLaneV2Config

METRIC_KEYS = {"DET_l": "DET_l", "DET_t": "DET_t", "TOP_ll": "TOP_ll", "TOP_lt": "TOP_lt",
               "score": "OLS"}


class OpenLaneV2Workload(Workload):
    name = "openlanev2"
    description = ("OpenLane-V2 baseline (R18, 7 cameras, IPM BEV, DETR lane/TE heads, MLP "
                   "topology), subset_A, official devkit OLS")
    Config = OpenLaneV2Config
    metrics = {"OLS": "higher", "DET_l": "higher", "DET_t": "higher", "TOP_ll": "higher",
               "TOP_lt": "higher", "F_score": "higher"}
    primary_metric = "OLS"
    # The devkit itself is checked in __init__, with its exact install command (it needs --no-deps).
    requires = ("scipy", "shapely", "ortools", "similaritymeasures", "iso3166", "cv2", "tqdm")
    extra = "openlanev2"

    def __init__(self, config: OpenLaneV2Config, user_set: frozenset[str] = frozenset()) -> None:
        if importlib.util.find_spec("openlanev2") is None:
            raise MissingExtra(f"workload openlanev2 needs the OpenLane-V2 devkit: {INSTALL_COMMAND}")
        super().__init__(config)
        self.user_set = frozenset(user_set)
        self._val_gt: Path | None = None

    @classmethod
    def presets(cls) -> dict[str, OpenLaneV2Config]:
        return {"smoke": OpenLaneV2Config.smoke(), "full": OpenLaneV2Config.full()}

    # -- data --
    def synthetic_root(self, cache_dir: Path) -> Path:
        c = self.config
        return Path(cache_dir) / (
            f"openlanev2-synth-v3-seed{c.synthetic_seed}-{c.synthetic_train_segments}+"
            f"{c.synthetic_val_segments}x{c.synthetic_frames_per_segment}-"
            f"scale{c.synthetic_image_scale:g}")

    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        from workloads.datasets.openlanev2 import (
            OpenLaneV2Dataset,
            cameras_of,
            collate_openlanev2,
            collection_path,
            load_collection,
            read_data_dict,
        )
        from workloads.datasets.openlanev2_synth import write_synthetic_openlanev2

        devkit = centerline_devkit()
        c = self.config
        if data_root is None:
            root = write_synthetic_openlanev2(
                self.synthetic_root(cache_dir), seed=c.synthetic_seed,
                train_segments=c.synthetic_train_segments, val_segments=c.synthetic_val_segments,
                frames_per_segment=c.synthetic_frames_per_segment,
                image_scale=c.synthetic_image_scale)
            source = f"synthetic:{root}"
        else:
            root, source = Path(data_root), str(data_root)
        data_dict = read_data_dict(root)
        paths = {s: collection_path(root, s, cache_dir, devkit.collect, data_dict)
                 for s in ("train", "val")}
        frames = {s: load_collection(p) for s, p in paths.items()}
        split, seg, ts = sorted(frames["train"])[0]
        where = str(root / split / seg / "info" / f"{ts}.json")
        cams = cameras_of(frames["train"][(split, seg, ts)], where)
        from_data: dict[str, str] = {}
        if "cameras" in self.user_set:
            missing = [cam for cam in c.cameras if cam not in cams]
            if missing:
                raise DatasetError(f"{where}: field 'sensor' has no camera {', '.join(missing)} "
                                   f"(--set cameras; the data has {', '.join(cams)})")
            if c.cameras[0] != "ring_front_center":
                raise UsageError("openlanev2: cameras must start with ring_front_center "
                                 "(the traffic-element head reads the first view)")
        else:
            self.config = c = dataclasses.replace(c, cameras=cams)
            from_data["cameras"] = where
        self._val_gt = paths["val"]
        if not 1 <= c.num_cameras <= len(c.cameras):
            raise UsageError(f"openlanev2: num_cameras must be 1..{len(c.cameras)}")
        common = dict(root=root, cameras=c.cameras[: c.num_cameras], input_size=c.input_size,
                      pad_divisor=c.pad_divisor, num_control=c.num_control_points)
        data = Datasets(
            train=OpenLaneV2Dataset(frames["train"], train=True, photometric=c.photometric_aug,
                                    cache_images=c.cache_images, **common),
            val=OpenLaneV2Dataset(frames["val"], train=False, **common),
            collate=collate_openlanev2, source=source)
        data.from_data = from_data  # contract 1 (a Datasets field once the harness has it)
        return data

    # -- model and optimisation --
    def weight_layouts(self, part: str) -> tuple[WeightLayout, ...]:
        return RESNET_LAYOUTS if part == "backbone" else ()

    def build_model(self) -> nn.Module:
        from workloads.openlanev2_topology.model import OpenLaneV2Baseline

        return OpenLaneV2Baseline(self.config)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in model.parameters() if p.requires_grad]
        if c.optimizer == "adam":  # the seed's DeepSpeed config: Adam, lr only
            return torch.optim.Adam(params, lr=c.lr)
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        c = self.config
        if c.optimizer == "adam":
            return None  # the seed's ds_config has no scheduler

        def factor(step: int) -> float:
            # mmcv CosineAnnealing (min_lr_ratio) with linear warmup from warmup_ratio. The
            # original anneals per epoch; here per step (one smooth curve at any run length).
            progress = min(step / max(total_steps, 1), 1.0)
            cosine = c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
            if step < c.warmup_iters:
                cosine *= 1 - (1 - step / c.warmup_iters) * (1 - c.warmup_ratio)
            return cosine

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # -- steps --
    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model(batch["imgs"], batch["lidar2img"], batch["front_valid_hw"])

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from workloads.openlanev2_topology.loss import baseline_losses

        out = self._forward(model, batch)
        return baseline_losses({k: v.float() for k, v in out.items()}, batch, self.config)

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        from workloads.openlanev2_topology.postprocess import decode

        return decode(self._forward(model, batch), batch, self.config)

    def _ground_truth(self) -> Path:
        if self._val_gt is None:
            raise UsageError("openlanev2: evaluate() needs datasets() to have loaded the val split")
        return self._val_gt

    def evaluate(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        from workloads.openlanev2_topology.postprocess import submission

        return score(str(self._ground_truth()), submission(predictions))

    def write_predictions(self, predictions: list[dict[str, Any]], out_dir: Path
                          ) -> dict[str, Any]:
        """Contract 3: the submission pickle the devkit and the challenge server read."""
        from workloads.openlanev2_topology.postprocess import submission

        path = Path(out_dir) / "submission_val.pkl"
        with open(path, "wb") as f:
            pickle.dump(submission(predictions), f)
        return {"format": "openlanev2-submission", "path": str(path.resolve()), "split": "val",
                "ground_truth": str(self._ground_truth())}

    def samples(self, batch: dict[str, Any]) -> int:
        return int(batch["imgs"].shape[0])

    def console_line(self, run: Any, row: dict[str, Any]) -> str:
        """The seed's line (idx samples / iter, bs *acc, eta, iter_time, losses)."""
        from workloads.openlanev2_topology.console import format_seed_line

        return format_seed_line(run, row)


def score(ground_truth: str, predictions: Any) -> dict[str, float]:
    """The devkit's evaluate (a dict or a submission pkl path) -> the record's metric names."""
    devkit = centerline_devkit()
    result = devkit.evaluate(ground_truth=ground_truth, predictions=predictions, verbose=False)
    ols = result["OpenLane-V2 Score"]
    metrics = {name: float(ols[key]) for key, name in METRIC_KEYS.items()}
    metrics["F_score"] = float(result["F-Score for 3D Lane"]["score"])
    return metrics


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [OpenLaneV2Workload]
