"""`harness run mmdet:CONFIG.py` / `mmdet3d:CONFIG.py`: an unmodified OpenMMLab config as a
workload. mmdet's registries build the model, datasets (with the config's pipelines),
optimizer (with its paramwise rules), parameter schedulers and evaluator; the harness's own
loop, backends, strategies, timing, memory, records and verdicts run them, as for a
built-in workload.

What is not the config's: the `smoke` preset (a short run: batch 2, 20 steps, synthetic data
in the dataset's real format when no `--data`), `--set` keys (a field below, else an mmengine
cfg-option), and pretrained files that are not on disk (dropped and named in the record:
a benchmark never downloads weights)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from harness.api import Datasets, Workload
from harness.atomic import atomic_write
from harness.errors import DatasetError, UsageError
from harness.sources import STACKS
from harness.workload_config import WorkloadConfig
from workloads.datasets.coco import to_coco_results
from workloads.openmmlab import mmconfig
from workloads.openmmlab import mmdet3d_infos as nus_infos
from workloads.openmmlab.stack import activate
from workloads.openmmlab.steps import SchedulerChain, normalise_losses

# Metrics of the evaluators the tested configs use, and which way is better.
# NuScenesMetric's keys: "<prefix>/<result name>_NuScenes/<name>" (mmdet3d 1.4's
# _evaluate_single), summary and per class (the nuScenes detection classes).
_NUS = "NuScenes metric/pred_instances_3d_NuScenes/"
_NUS_ERRORS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
KNOWN_METRICS: dict[str, dict[str, str]] = {
    "CocoMetric": {f"coco/bbox_{k}": "higher" for k in
                   ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")},
    "NuScenesMetric": {
        _NUS + "NDS": "higher", _NUS + "mAP": "higher",
        **{_NUS + k: "lower" for k in ("mATE", "mASE", "mAOE", "mAVE", "mAAE")},
        **{f"{_NUS}{c}_AP_dist_{d}": "higher" for c in nus_infos.CLASSES
           for d in ("0.5", "1.0", "2.0", "4.0")},
        **{f"{_NUS}{c}_{e}": "lower" for c in nus_infos.CLASSES for e in _NUS_ERRORS}},
}
PRIMARY = {"CocoMetric": "coco/bbox_mAP", "NuScenesMetric": _NUS + "NDS"}


@dataclasses.dataclass(frozen=True)
class OpenMMLabConfig(WorkloadConfig):
    config: str = ""  # the config file (absolute path)
    batch_size: int = 2
    eval_batch_size: int = 1
    steps: int = 20
    grad_clip: float | None = None  # None: the config's optim_wrapper.clip_grad
    num_workers: int = 0
    lr: float | None = None  # None: the config's optimizer lr
    backbone_weights: str = ""
    init_checkpoint: str = ""  # also the config's load_from when that file exists
    ema_decay: float = 0.0
    # Synthetic data when no --data (COCO-format configs): images per split and their size.
    synth_train_images: int = 64
    synth_val_images: int = 16
    synth_num_classes: int = 4
    synth_min_side: int = 96
    synth_max_side: int = 224
    synth_seed: int = 0
    # Synthetic nuScenes (NuScenesDataset configs): a v1.0-mini root at 1600x900 whose first
    # scene is in mini_train and second in mini_val (the devkit's lists).
    synth_scenes: int = 2
    synth_samples_per_scene: int = 2
    synth_objects_per_scene: int = 32
    # mmengine cfg-options: every --set key that is not a field above ("a.b=value").
    cfg_options: tuple[str, ...] = ()

    # The host sends --set keys it does not know here (harness.config.apply_overrides).
    passthrough_field: ClassVar[str] = "cfg_options"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class OpenMMLabWorkload(Workload):
    """One OpenMMLab config; subclasses made by `config_workload` fix the stack and file."""

    Config = OpenMMLabConfig
    stack: ClassVar[str] = "mmdet"
    config_path: ClassVar[Path]
    metrics: ClassVar[dict[str, str]] = {}
    primary_metric: ClassVar[str] = ""

    def __init__(self, config: Any, user_set: frozenset[str] = frozenset()) -> None:
        super().__init__(config, user_set)
        activate(self.stack)
        self.cfg = mmconfig.load_config(Path(self.config.config), self.config.cfg_options)
        self.provenance: dict[str, Any] = {
            "config": str(self.config_path),
            "config_sha256": hashlib.sha256(self.config_path.read_bytes()).hexdigest(),
            "cfg_options": list(self.config.cfg_options)}
        self._val: Any = None
        self._train: Any = None
        self._ground_truth: dict[str, str] = {}
        self._submission: str | None = None  # NuScenesMetric's results JSON, last evaluation

    def source_info(self) -> dict[str, Any]:
        from workloads.openmmlab.kernels import used_implementations

        return {**self.provenance, "stack": self.stack, "ops": used_implementations()}

    @classmethod
    def presets(cls) -> dict[str, Any]:
        base = OpenMMLabConfig(config=str(cls.config_path))
        cfg = _peek(cls.config_path)
        full_batch = int(cfg.get("train_dataloader", {}).get("batch_size", 2))
        clip = (cfg.get("optim_wrapper", {}).get("clip_grad") or {}).get("max_norm")
        base = dataclasses.replace(base, grad_clip=float(clip) if clip else None)
        return {"smoke": base,
                "full": dataclasses.replace(base, batch_size=full_batch, steps=0)}

    # -- data --
    def datasets(self, data_root: Path | None, cache_dir: Path) -> Datasets:
        from mmengine.dataset import pseudo_collate

        from_data: dict[str, str] = {}
        if data_root is None:
            data_root = self._write_synthetic(cache_dir)
            source = f"synthetic:{data_root}"
        else:
            source = str(data_root)
        moved = mmconfig.move_data_root(self.cfg, Path(data_root))
        self.provenance["data_paths_moved"] = moved
        if self._dataset_type() == "NuScenesDataset":
            from_data.update(self._nuscenes_infos(Path(data_root), cache_dir))
        ann = self._coco_ann_file("train_dataloader")
        user_classes = any("classes" in o.partition("=")[0] for o in self.config.cfg_options)
        if ann is not None and not user_classes:
            classes = mmconfig.coco_classes(ann)
            mmconfig.set_classes(self.cfg, classes)
            self.provenance["classes"] = list(classes)
            from_data["classes"] = str(ann)
        self._train = self._build_dataset("train_dataloader")
        self._val = self._build_dataset("val_dataloader")
        return Datasets(train=self._train, val=self._val, collate=pseudo_collate,
                        source=source, from_data=from_data)

    def _dataset_type(self) -> str:
        return str((mmconfig.inner_dataset(self.cfg, "train_dataloader") or {}).get("type"))

    def _nuscenes_infos(self, root: Path, cache_dir: Path) -> dict[str, str]:
        """mmdet3d's info pickles of `root` (mmdet3d_infos.py, written into the root or the
        cache), given to both datasets and the evaluator, with the root's version (the
        dataset's class METAINFO says v1.0-trainval and wins over the pickle's)."""
        version, paths = nus_infos.info_paths(root, cache_dir)
        user = {o.partition("=")[0].strip() for o in self.config.cfg_options}
        for loader, stem in (("train_dataloader", "train"), ("val_dataloader", "val"),
                             ("test_dataloader", "val")):
            ds = mmconfig.inner_dataset(self.cfg, loader)
            if ds is None:
                continue
            if not any(k.startswith(loader) and k.endswith("ann_file") for k in user):
                ds["ann_file"] = str(paths[stem])
            ds["metainfo"] = {**dict(ds.get("metainfo") or {}), "version": version}
        for key in ("val_evaluator", "test_evaluator"):
            ev = self.cfg.get(key)
            if isinstance(ev, dict) and f"{key}.ann_file" not in user:
                ev["ann_file"] = str(paths["val"])
        self._ground_truth = {"dataroot": str(root.resolve()), "version": version,
                              "eval_set": nus_infos.EVAL_SET[version]}
        self.provenance["infos"] = {k: str(v) for k, v in paths.items()}
        return {"infos": str(paths["train"]), "version": str(root / version)}

    def _coco_ann_file(self, loader: str) -> Path | None:
        ds = mmconfig.inner_dataset(self.cfg, loader) or {}
        ann = ds.get("ann_file")
        if not isinstance(ann, str) or not ann.endswith(".json"):
            return None
        path = Path(ann)
        return path if path.is_absolute() else Path(ds.get("data_root", "")) / path

    def _build_dataset(self, loader: str) -> Any:
        registry = __import__(f"{self.stack}.registry", fromlist=["DATASETS"]).DATASETS
        spec = self.cfg.get(loader, {}).get("dataset")
        if spec is None:
            raise UsageError(f"config {self.config_path}: no {loader}.dataset")
        try:
            dataset = registry.build(spec)
            dataset.full_init()
            while hasattr(dataset, "dataset") and not hasattr(dataset, "cat_ids"):
                # a wrapper (RepeatDataset...) serves the inner one's samples; the val
                # split's COCO ids and annotation file are the inner one's
                if loader == "train_dataloader":
                    break
                dataset = dataset.dataset
        except (FileNotFoundError, KeyError, ValueError, AssertionError) as exc:
            raise DatasetError(f"{loader}.dataset ({spec.get('type')}) does not load: "
                               f"{type(exc).__name__}: {exc}") from None
        if len(dataset) == 0:
            raise DatasetError(f"{loader}.dataset ({spec.get('type')}) is empty after its "
                               f"filters (data_root {spec.get('data_root')})")
        return dataset

    def _write_synthetic(self, cache_dir: Path) -> Path:
        dataset_type = self._dataset_type()
        c = self.config
        if dataset_type == "NuScenesDataset":
            from workloads.datasets.nuscenes_synth import write_synthetic_nuscenes

            name = (f"nuscenes-synth-v1.0-mini-seed{c.synth_seed}-{c.synth_scenes}x"
                    f"{c.synth_samples_per_scene}-1600x900-obj{c.synth_objects_per_scene}")
            return write_synthetic_nuscenes(
                Path(cache_dir) / name, version="v1.0-mini", seed=c.synth_seed,
                num_scenes=c.synth_scenes, samples_per_scene=c.synth_samples_per_scene,
                image_size=(1600, 900), objects_per_scene=c.synth_objects_per_scene)
        if dataset_type != "CocoDataset":
            raise UsageError(f"no synthetic data for dataset type {dataset_type}: give --data "
                             f"a root in its format")
        from workloads.datasets.coco import SyntheticSpec, write_synthetic_coco

        spec = SyntheticSpec(num_classes=c.synth_num_classes, train_images=c.synth_train_images,
                             val_images=c.synth_val_images, min_side=c.synth_min_side,
                             max_side=c.synth_max_side, seed=c.synth_seed)
        return write_synthetic_coco(Path(cache_dir), spec)

    # -- model and optimisation --
    def build_model(self) -> nn.Module:
        from workloads.openmmlab.kernels import install_backend_kernels

        registry = __import__(f"{self.stack}.registry", fromlist=["MODELS"]).MODELS
        if self.backend_name:
            self.provenance["kernels_registered"] = install_backend_kernels(
                self.backend_name, self.op_kernels)
        kept, dropped = mmconfig.drop_missing_pretrained(self.cfg)
        self.provenance["pretrained_loaded"] = kept
        self.provenance["pretrained_dropped"] = dropped
        model = registry.build(self.cfg.model)
        model.init_weights()
        load_from = self.cfg.get("load_from")
        if load_from and not self.config.init_checkpoint:
            self.provenance["load_from"] = load_from if Path(load_from).is_file() else None
        return model

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        from mmengine.optim import build_optim_wrapper

        spec = self.cfg.optim_wrapper.copy()
        if self.config.lr is not None:
            spec["optimizer"] = {**spec["optimizer"], "lr": self.config.lr}
        spec.pop("clip_grad", None)  # the harness clips (grad_clip), once
        # Mixed precision is the backend's (--precision), not the config's AmpOptimWrapper.
        spec["type"] = "OptimWrapper"
        spec.pop("loss_scale", None)
        return build_optim_wrapper(_unwrap(model), spec).optimizer

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        from mmengine.registry import PARAM_SCHEDULERS

        specs = self.cfg.get("param_scheduler") or []
        if isinstance(specs, dict):
            specs = [specs]
        epoch_length = max(1, len(self._train) // max(1, self.config.batch_size
                                                      * self.strategy.world_size))
        built = []
        for spec in specs:
            spec = dict(spec)
            spec.setdefault("end", total_steps if not spec.get("by_epoch", True)
                            else max(1, total_steps // epoch_length))
            if spec.get("by_epoch", True):
                spec["convert_to_iter_based"] = True
            built.append(PARAM_SCHEDULERS.build(
                spec, default_args=dict(optimizer=optimizer, epoch_length=epoch_length)))
        return SchedulerChain(built) if built else None

    # -- steps --
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        data = _unwrap(model).data_preprocessor(batch, True)
        raw = model(**data, mode="loss")
        return normalise_losses(raw)

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> list[Any]:
        data = _unwrap(model).data_preprocessor(batch, False)
        outputs = model(**data, mode="predict")
        return [o.cpu().to_dict() for o in outputs]

    def samples(self, batch: dict[str, Any]) -> int:
        # mmdet's inputs are a list of images; mmdet3d's a dict of modalities
        return len(batch["data_samples"])

    def evaluate(self, predictions: list[Any]) -> dict[str, float]:
        from mmengine.evaluator import Evaluator

        spec = self.cfg.val_evaluator
        nuscenes = isinstance(spec, dict) and spec.get("type") == "NuScenesMetric"
        with tempfile.TemporaryDirectory(prefix="harness-nusc-") as tmp:
            if nuscenes:
                # the results JSON the metric writes is kept for write_predictions
                spec = {**spec, "jsonfile_prefix": tmp}
            evaluator = Evaluator(spec)
            evaluator.dataset_meta = self._val.metainfo
            evaluator.process(data_samples=predictions)
            if nuscenes:
                from workloads.openmmlab.mmdet3d_metric import nuscenes_metric_on_any_device

                with nuscenes_metric_on_any_device():
                    results = evaluator.evaluate(len(predictions))
                submission = Path(tmp) / "pred_instances_3d" / "results_nusc.json"
                self._submission = submission.read_text(encoding="utf-8")
            else:
                results = evaluator.evaluate(len(predictions))
        # NaN: a TP error the devkit leaves undefined (a cone's heading): not a measurement
        metrics = {k: float(v) for k, v in results.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        if not metrics and not any(_detections(p) for p in predictions):
            # mmdet's CocoMetric returns nothing when no image has a detection (it logs
            # "results ... empty"); the AP of no detections is 0, and a record must say so.
            metrics = dict.fromkeys(self.metrics, 0.0)
        return metrics

    def write_predictions(self, predictions: list[Any], out_dir: Path) -> dict[str, Any] | None:
        """COCO-format configs: the detections as a COCO results JSON (what pycocotools'
        loadRes reads), re-scorable with the official COCOeval. NuScenesMetric configs: the
        nuScenes detection submission the metric wrote and scored (evaluate()), which the
        devkit's DetectionEval re-scores on `ground_truth`."""
        if self._submission is not None:
            path = Path(out_dir) / "results_nusc.json"
            submission = self._submission
            atomic_write(path, lambda tmp: Path(tmp).write_text(submission, encoding="utf-8"))
            return {"format": "nuscenes-detection", "path": str(path.resolve()), "split": "val",
                    "ground_truth": dict(self._ground_truth)}
        if self._val is None or not hasattr(self._val, "cat_ids"):
            return None
        dets = [{"image_id": p["img_id"], "bboxes": p["pred_instances"]["bboxes"].tolist(),
                 "scores": p["pred_instances"]["scores"].tolist(),
                 "labels": p["pred_instances"]["labels"].tolist()} for p in predictions]
        results = to_coco_results(dets, list(self._val.cat_ids))
        path = Path(out_dir) / "detections_val_results.json"
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(results), encoding="utf-8"))
        return {"format": "coco-results", "path": str(path.resolve()), "split": "val",
                "ground_truth": str(Path(self._val.ann_file).resolve())}


def _detections(pred: dict[str, Any]) -> int:
    inst = pred.get("pred_instances") or pred.get("pred_instances_3d") or {}
    scores = inst.get("scores", inst.get("scores_3d")) if isinstance(inst, dict) else None
    return 0 if scores is None else int(len(scores))


def _peek(path: Path) -> Any:
    return mmconfig.load_config(path, ())


def config_workload(name: str) -> type[Workload]:
    """The workload class of `mmdet:PATH` / `mmdet3d:PATH` (exit 3 with the install line
    when the stack is missing, exit 2 when the file is not a config)."""
    stack, _, raw = name.partition(":")
    if stack not in STACKS:
        raise UsageError(f"unknown config source '{stack}:' (valid: "
                         f"{', '.join(s + ':' for s in STACKS)})")
    path = Path(raw).expanduser()
    if not raw:
        raise UsageError(f"{name}: give a config file after '{stack}:'")
    if not path.exists():
        raise UsageError(f"{name}: no such config file: {path}")
    if not path.is_file() or path.suffix != ".py":
        raise UsageError(f"{name}: {path} is not a config file (.py)")
    activate(stack)
    cfg = _peek(path.resolve())
    evaluator = cfg.get("val_evaluator") or {}
    etype = str(evaluator.get("type", "")) if isinstance(evaluator, dict) else ""
    attrs = {"name": name, "stack": stack, "config_path": path.resolve(),
             "description": f"{stack} config {path.name}",
             "metrics": KNOWN_METRICS.get(etype, {}), "primary_metric": PRIMARY.get(etype, "")}
    return type(f"OpenMMLab_{path.stem}", (OpenMMLabWorkload,), attrs)
