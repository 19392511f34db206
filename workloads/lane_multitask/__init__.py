"""Lane keypoints (GANet-style) + drivable area, one shared encoder, on the TuSimple layout.

Batches are dicts: images (B, 3, H, W) uint8 crops, drivable (B, H, W) uint8, GANet's targets
at the heatmap size (training), index (B,) into the split's frames. Metrics: the official
TuSimple Accuracy/FP/FN, GANet's F1, drivable IoU figures; predictions are written in the
TuSimple submission format with the masks as PNGs.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from harness import DatasetError, Datasets, UsageError, Workload, hookimpl
from harness.start_weights import WeightLayout
from workloads.datasets import tusimple
from workloads.datasets.tusimple_synth import SynthSpec, write_synthetic_tusimple
from workloads.lane_multitask.config import LanesConfig
from workloads.lane_multitask.data import LaneDataset, collate, crop_top_px
from workloads.lane_multitask.decode import DecodeConfig, decode_lanes
from workloads.lane_multitask.loss import multitask_loss
from workloads.lane_multitask.metric import DrivableIoU, tusimple_scores
from workloads.lane_multitask.model import HEAD_OUTPUTS, TASKS, LaneMultitaskNet
from workloads.layers.pretrained import RESNET_LAYOUTS

PREDICTIONS_FILE = "tusimple_predictions.json"


def _core(model: nn.Module) -> LaneMultitaskNet:
    while not isinstance(model, LaneMultitaskNet):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a LaneMultitaskNet (possibly wrapped), got {type(model).__name__}")
        model = inner
    return model


def paste_mask(mask_in: np.ndarray, cfg: LanesConfig) -> np.ndarray:
    """An input-resolution mask back into the source frame (rows above the crop are 0)."""
    w_src, h_src = cfg.source_size
    top = crop_top_px(cfg)
    full = np.zeros((h_src, w_src), np.uint8)
    full[top:] = np.asarray(Image.fromarray(mask_in).resize((w_src, h_src - top), Image.NEAREST))
    return full


class LanesWorkload(Workload):
    name = "lanes"
    description = "GANet-style lane keypoints + drivable area (shared ResNet), TuSimple metric"
    Config = LanesConfig
    metrics = {"Accuracy": "higher", "FP": "lower", "FN": "lower", "F1": "higher",
               "drivable_IoU_mean": "higher", "drivable_IoU_median": "higher",
               "drivable_mIoU": "higher", "drivable_IoU_lt_0.4": "lower",
               "drivable_IoU_ge_0.4": "higher"}
    primary_metric = "F1"
    requires = ("scipy",)
    extra = "lanes"

    def __init__(self, config: LanesConfig, user_set: frozenset[str] = frozenset()) -> None:
        super().__init__(config, user_set)
        self.root: Path | None = None
        self._val: list[tusimple.LaneFrame] = []
        self._log_vars: torch.Tensor | None = None
        self._t0: float | None = None
        # TuSimple run_time per frame index (ms): kept beside the predictions, which stay
        # deterministic so two backends' decoded lanes compare equal
        self._run_times: dict[int, float] = {}

    @classmethod
    def presets(cls) -> dict[str, LanesConfig]:
        return {"smoke": LanesConfig.smoke(), "full": LanesConfig.full()}

    # -- data --
    def _resolve_from_data(self, root: Path, train: list[tusimple.LaneFrame],
                           val: list[tusimple.LaneFrame]) -> dict[str, str]:
        c, from_data = self.config, {}
        size = tusimple.image_size(root, train[0])
        where = root / train[0].raw_file
        if "source_size" in self.user_set:
            if tuple(c.source_size) != size:
                raise DatasetError(f"{where}: image is {size[0]}x{size[1]} but --set "
                                   f"source_size={c.source_size[0]},{c.source_size[1]}")
        else:
            self.config = dataclasses.replace(self.config, source_size=size)
            from_data["source_size"] = f"{where}: {size[0]}x{size[1]}"
        counts = tusimple.drivable_sources(root, train + val)
        found = ("files" if counts["derived"] == 0 else "derived" if counts["file"] == 0
                 else "mixed")
        mask_dir = root / tusimple.MASK_DIR
        if "drivable_source" in self.user_set and c.drivable_source != "auto":
            if c.drivable_source == "files" and counts["derived"]:
                missing = next(f for f in train + val
                               if not tusimple.mask_path(root, f.raw_file).is_file())
                raise DatasetError(f"{tusimple.mask_path(root, missing.raw_file)}: drivable mask "
                                   f"missing but --set drivable_source=files")
        else:
            self.config = dataclasses.replace(self.config, drivable_source=found)
            from_data["drivable_source"] = (
                f"{mask_dir}: {counts['file']} of {len(train) + len(val)} frames have a mask "
                f"file; {counts['derived']} derived between the outermost lanes")
        return from_data

    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        c = self.config
        if data_root is None:
            spec = SynthSpec(train_frames=c.synth_train_frames, test_frames=c.synth_test_frames,
                             seed=c.synth_seed)
            root = write_synthetic_tusimple(Path(cache_dir), spec)
            source = f"synthetic:{root}"
        else:
            root, source = Path(data_root), str(data_root)
        train = tusimple.load_split(root, "train")
        val = tusimple.load_split(root, "test")
        from_data = self._resolve_from_data(root, train, val)
        self.root, self._val = root, val
        return Datasets(train=LaneDataset(root, train, self.config, train=True),
                        val=LaneDataset(root, val, self.config, train=False),
                        collate=collate, source=source, from_data=from_data)

    # -- model and optimisation --
    def weight_layouts(self, part: str) -> tuple[WeightLayout, ...]:
        return RESNET_LAYOUTS if part == "backbone" else ()

    def build_model(self) -> nn.Module:
        return LaneMultitaskNet(self.config)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        log_vars = _core(model).log_vars
        rest = [p for p in model.parameters() if p.requires_grad and p is not log_vars]
        groups: list[dict[str, Any]] = [{"params": rest, "weight_decay": c.weight_decay}]
        if log_vars is not None:  # Kendall et al.'s log-variances: never decayed
            groups.append({"params": [log_vars], "weight_decay": 0.0})
        return torch.optim.Adam(groups, lr=c.lr, betas=(0.9, 0.999), eps=1e-8)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        c = self.config
        total = max(1, total_steps)

        def factor(step: int) -> float:
            # mmcv 'step' policy with constant warmup: warmup_ratio for the first iterations
            base = c.gamma ** sum(step >= m * total for m in c.milestones)
            return base * (c.warmup_ratio if step < c.warmup_steps else 1.0)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(batch["images"].float())
        return multitask_loss(out, batch, self.config, _core(model).log_vars)

    # -- inference --
    def forward_for_eval(self, model: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        self._t0 = time.perf_counter()
        lv = _core(model).log_vars if isinstance(model, nn.Module) else None
        self._log_vars = None if lv is None else lv.detach().float().cpu()
        out = model(batch["images"].float())
        return [out[k] for k in HEAD_OUTPUTS] if isinstance(out, dict) else list(out)

    def postprocess(self, model: Any, outputs: list[Any], batch: dict[str, Any]
                    ) -> list[dict[str, Any]]:
        c = self.config
        maps = {k: torch.as_tensor(v).detach().float().cpu() for k, v in zip(HEAD_OUTPUTS, outputs)}
        kpts = torch.clamp(torch.sigmoid(maps["kpts_hm"]), 1e-4, 1 - 1e-4).numpy()
        pts_off, int_off = maps["pts_offset"].numpy(), maps["int_offset"].numpy()
        masks = (torch.sigmoid(maps["drivable"][:, 0]) > c.mask_thr).numpy().astype(np.uint8)
        dcfg = DecodeConfig(c.kpt_thr, c.root_thr, c.cluster_thr, c.points_thr, c.hm_stride)
        top = crop_top_px(c)
        preds = []
        for b, index in enumerate(batch["index"].tolist()):
            frame = self._val[index]
            lanes = decode_lanes(kpts[b, 0], pts_off[b], int_off[b], frame.h_samples.tolist(),
                                 dcfg, c.input_size, c.source_size, top)
            preds.append({"raw_file": frame.raw_file, "lanes": lanes, "mask": masks[b],
                          "index": index})
        # TuSimple's run_time: this batch's forward + decoding, per image, in ms
        elapsed = (time.perf_counter() - self._t0) * 1000 if self._t0 is not None else 0.0
        for p in preds:
            self._run_times[p["index"]] = elapsed / max(len(preds), 1)
        return preds

    def run_time(self, prediction: dict[str, Any]) -> float:
        return float(prediction.get("run_time", self._run_times.get(prediction["index"], 0.0)))

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        return self.postprocess(model, self.forward_for_eval(model, batch), batch)

    def evaluate(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        if self.root is None:
            raise UsageError("lanes: evaluate() needs datasets() to have loaded the test split")
        gts = [{"raw_file": f.raw_file, "lanes": f.lanes.tolist(), "h_samples": f.h_samples.tolist()}
               for f in self._val]
        metrics = tusimple_scores([{**p, "run_time": self.run_time(p)} for p in predictions], gts)
        ious = DrivableIoU()
        use_files = self.config.drivable_source != "derived"
        for p in predictions:
            frame = self._val[p["index"]]
            gt, _ = tusimple.drivable_mask(self.root, frame, self.config.source_size, use_files)
            ious.add(paste_mask(p["mask"], self.config), gt)
        metrics.update(ious.result())
        if self._log_vars is not None:  # the learned task weights exp(-s_t)
            for task, s in zip(TASKS, self._log_vars.tolist()):
                metrics[f"loss_weight_{task}"] = float(np.exp(-s))
        return metrics

    def write_predictions(self, predictions: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        path = Path(out_dir) / PREDICTIONS_FILE
        with open(path, "w", encoding="utf-8") as f:
            for p in predictions:
                f.write(json.dumps({"raw_file": p["raw_file"], "lanes": p["lanes"],
                                    "run_time": self.run_time(p)}) + "\n")
        for p in predictions:
            mpath = Path(out_dir) / tusimple.mask_path(Path("."), p["raw_file"])
            mpath.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(paste_mask(p["mask"], self.config) * 255).save(mpath)
        assert self.root is not None
        return {"format": "tusimple", "path": str(path.resolve()), "split": "test",
                "ground_truth": str((self.root / tusimple.TEST_LABEL).resolve()),
                "masks": str((Path(out_dir) / tusimple.MASK_DIR).resolve())}

    def samples(self, batch: dict[str, Any]) -> int:
        return int(batch["images"].shape[0])


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [LanesWorkload]
