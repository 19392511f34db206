"""Megvii's BEVDepth / MatrixVT checkpoints (bevdepth_lss_r50_2key_manifest.txt: the original's
state dicts, names and shapes, derived from its code at d78c7b58) against
`bevdepth_lightning_key` and this project's full BEVDepth / MatrixVT models.

No original code is needed: a Lightning-style checkpoint of random tensors is rebuilt from the
manifest's names and shapes, mapped, and loaded the way `harness eval --checkpoint` and
`harness run --set init_checkpoint=` load it. Builds the two full models (R50, ~80M
parameters) four times: ~20 s of CPU (about 35 s wall on a busy two-core machine).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from harness.safe_load import load_checkpoint
from harness.start_weights import load_model_weights, load_start_weights, read_manifest
from workloads.bevdepth import BEVDepthWorkload, MatrixVTWorkload
from workloads.bevdepth.model import camera_params
from workloads.bevdepth.testing import random_batch
from workloads.bevdepth.weights import BEVDEPTH_LIGHTNING, bevdepth_lightning_key

MANIFEST = Path(__file__).with_name("bevdepth_lss_r50_2key_manifest.txt")
LSS_2KEY = "bev_depth_lss_r50_256x704_128x128_24e_2key"
MATRIXVT = "matrixvt_bev_depth_lss_r50_256x704_128x128_24e_ema"
GEOMETRY = ("voxel_size", "voxel_coord", "voxel_num", "frustum", "bev_anchors")
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked", *GEOMETRY)
Rows = list[tuple[str, tuple[int, ...]]]


def _manifest() -> dict[str, Rows]:
    """The manifest's sections: `# [experiment] ...` starts one, `name<TAB>shape` rows follow."""
    return read_manifest(MANIFEST)


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[1]
    if leaf in ("num_batches_tracked", "voxel_num"):
        return torch.randint(0, 10_000, shape, generator=gen, dtype=torch.int64)
    if leaf == "running_var":
        return torch.rand(shape, generator=gen) + 0.5
    return torch.randn(shape, generator=gen) * 0.05


def _by_structure(original: list[str], own: list[str]) -> dict[str, str]:
    """Original key -> ours by module order alone, independent of the regexes: within each
    module both list their tensors in the same order; the modules come in another order (the
    original's head registers shared_conv and task_heads, CenterHead's, before trunk and neck;
    its BaseLSSFPN registers MatrixVT's horiconv/depth_reducer after the depth net)."""
    groups = ("backbone.img_backbone.", "backbone.img_neck.", ("backbone.horiconv.",
              "backbone.depth_reducer."), "backbone.depth_net.", "head.trunk.", "head.neck.",
              "head.shared_conv.", "head.task_heads.")

    def rank(key: str) -> int:
        key = key.removeprefix("model.")
        return next(i for i, g in enumerate(groups) if key.startswith(g))

    weights = [k for k in original if k.rsplit(".", 1)[1] not in GEOMETRY]
    assert len(weights) == len(own)
    return dict(zip(sorted(weights, key=rank), own))  # sorted() is stable


def _lightning_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """What PyTorch Lightning's ModelCheckpoint writes for BEVDepthLightningModel: the model's
    tensors under "state_dict" beside the trainer's state (AdamW, MultiStepLR whose milestones
    are a collections.Counter, callbacks) and the hyper-parameters as plain values."""
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=2e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [19, 23])
    return {"epoch": 23, "global_step": 10548, "pytorch-lightning_version": "1.6.0",
            "state_dict": state, "loops": {"fit_loop": {"epoch_progress": {"current": 24}}},
            "callbacks": {"ModelCheckpoint{'monitor': None}": {
                "best_model_score": None, "dirpath": "outputs/lightning_logs/version_0"}},
            "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()],
            "hparams_name": "kwargs",
            "hyper_parameters": {"gpus": 8, "batch_size_per_device": 8,
                                 "ida_aug_conf": {"resize_lim": (0.386, 0.55)}}}


# MatrixVT's case writes and reads another 300 MB file: `slow` (its map shares all but the
# view transform's keys with BEVDepth's, which the default suite checks).
CASES = [(BEVDepthWorkload, LSS_2KEY, 861, 76_384_590),
         pytest.param(MatrixVTWorkload, MATRIXVT, 912, 79_220_639, marks=pytest.mark.slow)]


@pytest.mark.parametrize("workload_cls,section,tensors,params", CASES,
                         ids=["bevdepth-2key", "matrixvt"])
def test_original_checkpoint_maps_onto_the_full_model_and_loads(
        tmp_path: Path, workload_cls: type[BEVDepthWorkload], section: str, tensors: int,
        params: int) -> None:
    rows = _manifest()[section]
    assert len(rows) == tensors
    assert sum(torch.Size(s).numel() for n, s in rows if not n.endswith(_BUFFERS)) == params

    workload = workload_cls(workload_cls.presets()["full"])
    assert workload.weight_layouts("model") == (BEVDEPTH_LIGHTNING,)
    torch.manual_seed(0)
    model = workload.build_model().eval()
    own = model.state_dict()

    names = [n for n, _ in rows]
    renamed = {n: bevdepth_lightning_key(n) for n in names}
    # Only the geometry constants are left out, and they are ones ours computes from its config.
    ignored = sorted(n for n, r in renamed.items() if r is None)
    assert ignored == sorted(n for n in names if n.rsplit(".", 1)[1] in GEOMETRY)
    shapes = dict(rows)
    vt = model.view_transform
    assert shapes["model.backbone.frustum"] == tuple(vt.frustum.shape)
    assert shapes["model.backbone.voxel_num"] == (len(vt.grid.num),)
    if "model.backbone.bev_anchors" in shapes:
        assert shapes["model.backbone.bev_anchors"] == (*vt.grid.num[:2], 2)
    kept = {r: n for n, r in renamed.items() if r is not None}
    assert len(kept) == tensors - len(ignored)  # no two original tensors land on one of ours
    assert set(kept) == set(own)
    bad = [(k, shapes[kept[k]], tuple(own[k].shape)) for k in own
           if shapes[kept[k]] != tuple(own[k].shape)]
    assert not bad
    # The regexes agree with the plain module-order alignment, key by key.
    assert {n: r for r, n in kept.items()} == _by_structure(names, list(own))
    # A bare BaseBEVDepth state dict (torch.save(lightning_model.model.state_dict())) too.
    assert all(bevdepth_lightning_key(n.removeprefix("model.")) == r for n, r in renamed.items())

    gen = torch.Generator().manual_seed(0)
    sd = {n: _random_tensor(n, s, gen) for n, s in rows}
    assert all(sd[kept[k]].dtype == own[k].dtype for k in own)
    path = tmp_path / f"{section}.ckpt"
    torch.save(_lightning_checkpoint(sd), path)

    # harness eval --checkpoint: the file read as eval reads it, the layout detected and named.
    ckpt = load_checkpoint(path)
    assert ckpt.layout == "state_dict" and ckpt.workload is None
    assert load_model_weights(model, ckpt.state_dict, path,
                              workload.weight_layouts("model")) == "bevdepth-lightning"
    loaded = model.state_dict()
    for k in own:
        want = sd[kept[k]]
        if ".heads.dim.1." in k:  # the original's sizes are (l, w, h), ours (w, l, h)
            want = want[[1, 0, 2]]
        assert torch.equal(loaded[k], want), k
    # Tensors the forward pass reads, in the modules that use them.
    src = "model.backbone.depth_net."
    dn = model.depth_net
    assert torch.equal(dn.depth_mlp[2].weight, sd[src + "depth_mlp.fc2.weight"])
    assert torch.equal(dn.context_se.expand.bias, sd[src + "context_se.conv_expand.bias"])
    assert torch.equal(dn.depth_conv[3].project[0].weight, sd[src + "depth_conv.3.conv1.weight"])
    assert torch.equal(dn.depth_conv[3].image_pool[1][1].running_var,
                       sd[src + "depth_conv.3.global_avg_pool.2.running_var"])
    assert torch.equal(dn.depth_conv[4].conv_offset.weight,
                       sd[src + "depth_conv.4.conv_offset.weight"])
    assert torch.equal(model.encoder.backbone.stages[3][2].conv3.weight,
                       sd["model.backbone.img_backbone.layer4.2.conv3.weight"])
    assert torch.equal(model.head.trunk.conv1.weight, sd["model.head.trunk.conv1.weight"])
    heatmap = model.head.task_heads[1].heads["heatmap"]
    assert tuple(heatmap[1].weight.shape) == (2, 64, 3, 3)  # truck, construction_vehicle
    assert torch.equal(heatmap[1].bias, sd["model.head.task_heads.1.heatmap.1.bias"])
    assert torch.equal(heatmap[0][1].weight, sd["model.head.task_heads.1.heatmap.0.bn.weight"])
    if section == MATRIXVT:
        hc = vt.horiconv
        assert torch.equal(hc.conv2[1][0].weight, sd["model.backbone.horiconv.conv2.3.weight"])
        assert torch.equal(hc.conv1[0][1].running_mean,
                           sd["model.backbone.horiconv.conv1.1.running_mean"])
        assert torch.equal(vt.depth_reducer.vertical_weighter[3].weight,
                           sd["model.backbone.depth_reducer.vertical_weighter.3.weight"])

    # harness run --set init_checkpoint=: the same file through the run's loader.
    run = workload_cls(dataclasses.replace(workload.config, init_checkpoint=str(path)))
    with torch.no_grad():
        model.head.shared_conv[0].weight.zero_()  # (one model build saved: ~1 s)
    [entry] = load_start_weights(run, model)
    assert entry["layout"] == "bevdepth-lightning" and entry["part"] == "model"
    assert entry["keys_loaded"] == len(own) and entry["keys_ignored"] == len(ignored)
    assert torch.equal(model.head.shared_conv[0].weight, sd["model.head.shared_conv.conv.weight"])


def test_the_other_experiments_checkpoint_is_refused() -> None:
    """A MatrixVT (1-key) file does not fit the 2-key BEVDepth model, nor the reverse; the
    error names the closest layout and what differs."""
    from harness.errors import UsageError

    sections = _manifest()
    for workload_cls, other in ((BEVDepthWorkload, MATRIXVT), (MatrixVTWorkload, LSS_2KEY)):
        workload = workload_cls(workload_cls.presets()["full"])
        model = workload.build_model()
        sd = {n: torch.zeros(s, dtype=torch.int64 if n.endswith(("num_batches_tracked",
                                                                 "voxel_num")) else None)
              for n, s in sections[other]}
        with pytest.raises(UsageError, match=r"closest layout bevdepth-lightning.*"
                                             r"head\.trunk\.conv1\.weight"):
            load_model_weights(model, sd, Path("other.ckpt"), workload.weight_layouts("model"))


# The original's DepthNet.forward (bevdepth/layers/backbones/base_lss_fpn.py:213-220) reads
# mats_dict[...][:, 0:1], the current key's intrinsics/ida/sensor2ego, for every key frame.
def test_previous_key_depth_net_sees_the_current_keys_camera_params() -> None:
    cfg = dataclasses.replace(BEVDepthWorkload.presets()["smoke"], num_keys=2)
    model = BEVDepthWorkload(cfg).build_model().eval()
    batch = random_batch(cfg, batch=1, seed=3)
    mats = {k: batch[k] for k in ("sensor2ego_mats", "intrin_mats", "ida_mats", "bda_mat")}
    mats["sensor2ego_mats"] = mats["sensor2ego_mats"].clone()
    mats["sensor2ego_mats"][:, 1, :, 0, 3] -= 4.0  # the previous key: the ego has moved 4 m
    seen: list[torch.Tensor] = []
    model.depth_net.register_forward_pre_hook(lambda m, args: seen.append(camera_params(args[1])))
    with torch.no_grad():
        model(batch["imgs"], mats)
    assert len(seen) == 2
    assert torch.equal(seen[1], seen[0])
