"""BEVDepth fidelity fixes: nothing frozen at random init, local backbone weights, loss
normalisers averaged across ranks (through the run's strategy)."""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from harness.strategies import DDPStrategy, Strategy
from workloads.bevdepth import BEVDepthWorkload
from workloads.bevdepth.config import BEVDepthConfig
from workloads.bevdepth.model import ImageEncoder
from workloads.bevdepth.testing import random_batch
from workloads.layers.pretrained import load_backbone_weights


def _small(**kw: object) -> BEVDepthConfig:
    # smoke widths with the full preset's freezing (frozen_stages=0)
    return dataclasses.replace(BEVDepthConfig.smoke(), backbone_frozen_stages=0, **kw)


def test_random_init_freezes_nothing() -> None:
    assert BEVDepthConfig.full().backbone_frozen_stages == 0
    enc = ImageEncoder(_small()).train()
    assert all(p.requires_grad for p in enc.backbone.parameters())
    assert enc.backbone.bn1.training


def test_loaded_weights_freeze_the_stem_as_the_original(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = ImageEncoder(_small()).backbone
    for p in source.parameters():
        p.data.normal_()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    enc = ImageEncoder(_small(backbone_weights=str(tmp_path / "r18.pth"))).train()
    load_backbone_weights(enc.backbone, tmp_path / "r18.pth")  # what the host does for a run
    assert torch.equal(enc.backbone.conv1.weight, source.conv1.weight)
    assert not enc.backbone.conv1.weight.requires_grad and not enc.backbone.bn1.training
    assert all(p.requires_grad for p in enc.backbone.stages.parameters())


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        value = DDPStrategy().mean_across_ranks(torch.tensor(float(1 + 5 * rank)))  # 1 and 6
        torch.save(value, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_the_strategy_averages_over_ranks(tmp_path: Path) -> None:
    assert Strategy().mean_across_ranks(torch.tensor(3.0)).item() == 3.0  # single process: identity
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path / "v")), nprocs=2)
    assert [torch.load(tmp_path / f"v.{r}").item() for r in (0, 1)] == [3.5, 3.5]


def test_normalisers_are_averaged_through_the_strategy() -> None:
    """Heatmap and box normalisers go through the run's strategy (a stand-in whose reduction
    doubles every count halves exactly those two terms); the depth loss is per rank."""

    class Doubling(Strategy):
        def mean_across_ranks(self, value: torch.Tensor) -> torch.Tensor:
            return value * 2

    torch.manual_seed(0)
    wl = BEVDepthWorkload(BEVDepthWorkload.presets()["smoke"])
    model = wl.build_model()
    batch = random_batch(wl.config, batch=2, objects=6)
    torch.manual_seed(1)
    local = {k: v.item() for k, v in wl.loss(model, batch).items()}
    wl.strategy = Doubling()
    torch.manual_seed(1)
    doubled = {k: v.item() for k, v in wl.loss(model, batch).items()}
    assert doubled["loss_heatmap"] == pytest.approx(local["loss_heatmap"] / 2, rel=1e-5)
    assert doubled["loss_bbox"] == pytest.approx(local["loss_bbox"] / 2, rel=1e-5)
    assert doubled["loss_depth"] == pytest.approx(local["loss_depth"], rel=1e-6)


def test_velocity_code_weights_follow_the_key_count_as_the_original() -> None:
    from workloads.bevdepth import BEVDepthWorkload, MatrixVTWorkload

    two_key = BEVDepthWorkload.presets()["full"]
    assert two_key.num_keys == 2 and two_key.box_code_weights() == (1.0,) * 10
    one_key = MatrixVTWorkload.presets()["full"]
    assert one_key.num_keys == 1 and one_key.box_code_weights()[-2:] == (0.5, 0.5)
    smoke = BEVDepthWorkload.presets()["smoke"]
    assert smoke.box_code_weights() == (1.0,) * 8 + (0.5, 0.5)  # unchanged: its rows hold
    assert dataclasses.replace(smoke, code_weights=(2.0,) * 10).box_code_weights() == (2.0,) * 10


def test_matrixvt_full_follows_its_ema_experiment() -> None:
    """Megvii's MatrixVT builds on bev_depth_lss_r50_256x704_128x128_24e_ema: AdamW at a
    constant lr and model EMA 0.999; BEVDepth's 2-key full keeps its MultiStepLR at 19/24, 23/24."""
    from workloads.bevdepth import BEVDepthWorkload, MatrixVTWorkload

    mvt = MatrixVTWorkload.presets()["full"]
    assert mvt.ema_decay == 0.999 and mvt.lr_milestones == ()
    wl = MatrixVTWorkload(dataclasses.replace(mvt, backbone_depth=18, backbone_base_channels=8))
    sched = wl.build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 100)
    for _ in range(100):
        sched.step()
    assert sched.get_last_lr() == [1.0]
    bev = BEVDepthWorkload.presets()["full"]
    assert bev.ema_decay == 0.0 and bev.lr_milestones == (19 / 24, 23 / 24)
    assert MatrixVTWorkload.presets()["smoke"].ema_decay == 0.0  # its rows hold
