"""StreamPETR: streaming multi-view 3D detection on nuScenes (exiawsh/StreamPETR,
stream_petr_r50_flash_704_bs2_seq_24e), scored by nuscenes-devkit.

Training is stateful: `train_batch_sampler` gives each batch slot its own sub-sequence
(a scene cut in `seq_split_num` parts) played in order, and the head's memory queue lives
across iterations. Per slot the workload keeps (sequence id, frame index, timestamp) of the
frame it saw last, on the host: `prev_exists` is 1 where the new frame is the next frame of
the same sub-sequence, else 0 (memory reset), and the time difference is computed there in
float64 and handed to the device as float32. Evaluation plays each val scene in order at
batch 1 with the memory reset on scene change. Losses are logged with the original's 29
names (`frame_0_loss_cls` ... `frame_0_centerness_losses`); the metric is the devkit's
detection metric (the seven values plus `AP_<class>`), the predictions file is the nuScenes
submission JSON.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import DatasetError, Datasets, UsageError, Workload, hookimpl
from harness.start_weights import WeightLayout
from workloads.layers.pretrained import RESNET_LAYOUTS
from workloads.streampetr.config import StreamPETRConfig

NUSCENES_VERSIONS = ("v1.0-trainval", "v1.0-mini")
EVAL_SET = {"v1.0-mini": "mini_val", "v1.0-trainval": "val"}


def _version_of(root: Path) -> str:
    for version in NUSCENES_VERSIONS:
        if (root / version).is_dir():
            return version
    raise DatasetError(f"{root}: not a nuScenes root (no {' or '.join(NUSCENES_VERSIONS)} folder)")


class StreamPETRWorkload(Workload):
    name = "streampetr"
    description = ("StreamPETR R50 256x704 (streaming object queries, memory queue), nuScenes "
                   "detection NDS (stream_petr_r50_flash_704_bs2_seq_24e)")
    Config = StreamPETRConfig
    metrics = {"mAP": "higher", "NDS": "higher", "mATE": "lower", "mASE": "lower",
               "mAOE": "lower", "mAVE": "lower", "mAAE": "lower"}
    primary_metric = "NDS"
    requires = ("nuscenes", "scipy")
    extra = "bevdepth"

    def __init__(self, config: StreamPETRConfig, user_set: frozenset[str] = frozenset()) -> None:
        super().__init__(config)
        self.user_set = frozenset(user_set)
        self._val_infos: list[dict] | None = None
        self._ground_truth: dict[str, str] = {}
        # mode -> per-slot (sequence id, frame index, timestamp s) of the last frame seen;
        # rebound (never mutated) so a shallow copy of the workload cannot disturb it.
        self._last: dict[bool, tuple] = {}
        self._model: nn.Module | None = None

    @classmethod
    def presets(cls) -> dict[str, StreamPETRConfig]:
        return {"smoke": StreamPETRConfig.smoke(), "full": StreamPETRConfig.full()}

    # -- data --
    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        from workloads.datasets.nuscenes import write_synthetic_nuscenes
        from workloads.datasets.nuscenes_streampetr import (
            load_or_create_streampetr_infos,
            streampetr_info_files,
        )
        from workloads.streampetr.data import StreamDataParams, StreamPETRDataset, collate_stream

        c = self.config
        if c.eval_batch_size != 1:
            raise UsageError("streampetr evaluates one frame at a time (scenes played in order): "
                             "eval_batch_size must be 1")
        if data_root is None:
            w, h = c.synthetic_image_wh
            root = write_synthetic_nuscenes(
                Path(cache_dir) / (f"nuscenes-synth-{c.synthetic_version}-seed{c.synthetic_seed}-"
                                   f"{c.synthetic_scenes}x{c.synthetic_samples_per_scene}-{w}x{h}-"
                                   f"obj{c.synthetic_objects_per_scene}"),
                version=c.synthetic_version, seed=c.synthetic_seed, num_scenes=c.synthetic_scenes,
                samples_per_scene=c.synthetic_samples_per_scene, image_size=c.synthetic_image_wh,
                objects_per_scene=c.synthetic_objects_per_scene)
            version, source = c.synthetic_version, f"synthetic:{root}"
        else:
            root, source = Path(data_root), str(data_root)
            version = _version_of(root)
        infos = load_or_create_streampetr_infos(root, version, cache_dir)
        files = streampetr_info_files(root, version, cache_dir)[0]
        for split in ("train", "val"):
            if not infos.get(split):
                raise DatasetError(f"{root}: no samples in the {split} split ({files.get(split)})")
        first = infos["train"][0]["cams"][c.cams[0]]
        from_data = {"ida_resize_lim": (f"{files['train']}: {root}/{first['data_path']} is "
                                        f"{first['width']}x{first['height']}; the resize range is "
                                        "relative to the source images' eval scale")}
        params = StreamDataParams(
            final_dim=c.image_size, resize_lim=c.ida_resize_lim, bot_pct_lim=c.ida_bot_pct_lim,
            rand_flip=c.ida_rand_flip, rot_range=c.bda_rot_range, scale_ratio_range=c.bda_scale_range,
            cams=c.cams, classes=c.class_names, seq_split_num=c.seq_split_num,
            gt_bev_range=(c.pc_range[0], c.pc_range[1], c.pc_range[3], c.pc_range[4]))
        self._val_infos = infos["val"]
        self._ground_truth = {"dataroot": str(Path(root).resolve()), "version": version,
                              "eval_set": EVAL_SET[version]}
        kwargs: dict[str, Any] = dict(collate=collate_stream, source=source)
        if "from_data" in {f.name for f in dataclasses.fields(Datasets)}:
            kwargs["from_data"] = from_data
        return Datasets(train=StreamPETRDataset(infos["train"], root, params, train=True, source=str(root)),
                        val=StreamPETRDataset(infos["val"], root, params, train=False, source=str(root)),
                        **kwargs)

    def train_batch_sampler(self, dataset: Any, batch_size: int, world_size: int, rank: int, seed: int) -> Any:
        from workloads.streampetr.sampler import StreamingBatchSampler

        return StreamingBatchSampler(dataset.sequence_ids, batch_size, world_size, rank, seed)

    # -- model and optimisation --
    def weight_layouts(self, part: str) -> tuple[WeightLayout, ...]:
        from workloads.streampetr.weights import STREAMPETR_MMDET3D

        # The original's whole-model checkpoint (weights.py: packed attentions split, the
        # FocalHead's class rows reordered by the layout's transform).
        return RESNET_LAYOUTS if part == "backbone" else (STREAMPETR_MMDET3D,)

    def build_model(self) -> nn.Module:
        from workloads.streampetr.model import StreamPETR

        model = StreamPETR(self.config)
        self._model = model  # its head holds the memory queue that state_dict() saves
        return model

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
        rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        return torch.optim.AdamW([{"params": backbone, "lr": c.lr * c.backbone_lr_mult}, {"params": rest}],
                                 lr=c.lr, weight_decay=c.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        """mmcv CosineAnnealing (min_lr_ratio) with linear warmup from warmup_ratio."""
        c = self.config
        warm = min(c.warmup_iters, max(total_steps - 1, 0))

        def factor(step: int) -> float:
            cosine = c.min_lr_ratio + (1 - c.min_lr_ratio) * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1))) / 2
            if step < warm:
                return cosine * (1 - (1 - step / warm) * (1 - c.warmup_ratio))
            return cosine

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # -- streaming state --
    def _stream_inputs(self, batch: dict[str, Any], training: bool) -> dict[str, torch.Tensor]:
        metas = batch["metas"]
        last = self._last.get(training, ())
        prev, dt = [], []
        for i, m in enumerate(metas):
            before = last[i] if i < len(last) else None
            cont = (self.config.use_memory and before is not None and before[0] == m["sequence_id"]
                    and before[1] + 1 == m["frame_idx"])
            prev.append(1.0 if cont else 0.0)
            dt.append(m["timestamp"] - before[2] if cont else 0.0)  # float64 on the host
        self._last = {**self._last, training: tuple((m["sequence_id"], m["frame_idx"], m["timestamp"]) for m in metas)}
        dev = batch["imgs"].device
        data = {k: batch[k] for k in ("imgs", "intrinsics", "img2lidar", "ego_pose", "ego_pose_inv")}
        data["prev_exists"] = torch.tensor(prev, dtype=torch.float32).to(dev)
        data["dt"] = torch.tensor(dt, dtype=torch.float32).to(dev)
        return data

    # -- resume: the streaming state lives across iterations, so a checkpoint carries it --
    def state_dict(self) -> dict[str, Any]:
        """Per mode: the slots' last (sequence id, frame index, timestamp) and the head's
        memory queue (embeddings, reference points, velocities, ages, poses)."""
        memory = self._model.pts_bbox_head.memory_state() if self._model is not None else {}
        return {"last": {("train" if mode else "eval"): [list(t) for t in slots] for mode, slots in self._last.items()},
                "memory": memory}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._model is None:
            raise UsageError("streampetr: load_state_dict() needs build_model() first (the memory queue lives "
                             "on the model's head)")
        self._last = {name == "train": tuple(tuple(t) for t in slots) for name, slots in state["last"].items()}
        self._model.pts_bbox_head.load_memory_state(state["memory"])

    # -- steps --
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from workloads.streampetr.focal_head import focal_head_losses
        from workloads.streampetr.loss import head_losses

        c = self.config
        data = self._stream_inputs(batch, training=True)
        gt = {"gt_boxes": batch["gt_boxes"], "gt_labels": batch["gt_labels"]}
        out, aux = model(data, gt)
        terms = head_losses(out, batch["gt_boxes"], batch["gt_labels"], c, self.strategy.mean_across_ranks)
        if aux is not None:
            terms.update(focal_head_losses(aux, batch["gt_bboxes2d"], batch["gt_labels2d"], batch["centers2d"],
                                           (c.w_enc_cls, c.w_enc_bbox, c.w_enc_iou, c.w_centers2d, c.w_centerness)))
        return terms

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        from workloads.streampetr.loss import decode_boxes

        c = self.config
        out, _ = model(self._stream_inputs(batch, training=False))
        cls, code = out["cls"][-1].float(), out["boxes"][-1].float()
        n = cls.shape[-1]
        scores, idx = cls.sigmoid().flatten(1).topk(min(c.max_detections, cls.shape[1] * n), dim=1)
        boxes = decode_boxes(code.gather(1, (idx // n)[..., None].expand(-1, -1, code.shape[-1])))
        lo = torch.tensor(c.post_center_range[:3], device=boxes.device)
        hi = torch.tensor(c.post_center_range[3:], device=boxes.device)
        keep = ((boxes[..., :3] >= lo) & (boxes[..., :3] <= hi)).all(-1)
        boxes, scores, labels, keep = boxes.cpu(), scores.cpu(), (idx % n).cpu(), keep.cpu()
        return [dict(sample_token=m["sample_token"], boxes=boxes[i][keep[i]].double(), scores=scores[i][keep[i]],
                     labels=labels[i][keep[i]], ego2global_rotation=m["ego2global_rotation"],
                     ego2global_translation=m["ego2global_translation"]) for i, m in enumerate(batch["metas"])]

    def evaluate(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        from workloads.datasets.nuscenes_metric import METRIC_KEYS, detection_metrics

        if self._val_infos is None:
            raise UsageError("streampetr: evaluate() needs datasets() to have loaded the val split")
        m = detection_metrics(predictions, self._val_infos, class_names=self.config.class_names)
        out = {"mAP": float(m.mean_ap)}
        out.update({key: float(m.tp_errors[name]) for name, key in METRIC_KEYS.items()})
        out["NDS"] = float(m.nd_score)
        out.update({f"AP_{name}": float(ap) for name, ap in m.mean_dist_aps.items()})
        return out

    def write_predictions(self, predictions: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        from workloads.datasets.nuscenes_metric import to_nuscenes_submission

        if self._val_infos is None:
            raise UsageError("streampetr: write_predictions() needs datasets() to have loaded the val split")
        path = Path(out_dir) / "results_nusc.json"
        path.write_text(json.dumps(to_nuscenes_submission(predictions, self._val_infos,
                                                          class_names=self.config.class_names)))
        return {"format": "nuscenes-detection", "path": str(path.resolve()), "split": "val",
                "ground_truth": self._ground_truth}

    def samples(self, batch: dict[str, Any]) -> int:
        return int(batch["imgs"].shape[0])

    def memory_hints(self) -> list[str]:
        return [] if self.config.with_cp else ["--set with_cp=true (activation checkpointing)"]


@hookimpl
def harness_workloads() -> list[type[Workload]]:
    return [StreamPETRWorkload]
