"""OpenLane-V2 baseline: devkit install shim, losses, matchers, IPM, heads, metric format."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

from harness import MissingExtra, Workload
from workloads.openlanev2_topology import OpenLaneV2Workload, score
from workloads.openlanev2_topology.config import OpenLaneV2Config
from workloads.datasets.bezier import bernstein_matrix, fit_bezier_endpoints_fixed
from workloads.datasets.openlanev2_devkit import INSTALL_COMMAND, install_pywrapgraph_shim
from workloads.openlanev2_topology.loss import baseline_losses, focal_loss, topology_loss
from workloads.openlanev2_topology.model import IPMViewTransform, OpenLaneV2Baseline
from workloads.openlanev2_topology.postprocess import submission

SEED_LOSS_NAMES = ["lc_loss_cls", "lc_loss_bbox", "te_loss_cls", "te_loss_bbox", "te_loss_iou",
                   "topology_lclc_loss_cls", "topology_lcte_loss_cls"]


def test_pywrapgraph_shim_solves_min_cost_flow_through_the_old_api():
    install_pywrapgraph_shim()
    from ortools.graph import pywrapgraph

    flow = pywrapgraph.SimpleMinCostFlow()
    # two workers, two tasks: the cheap assignment is 0->3 (cost 1) and 1->2 (cost 2)
    for tail, head, cost in ((0, 1, 0), (0, 2, 5), (0, 3, 1), (1, 2, 2), (1, 3, 9)):
        flow.AddArcWithCapacityAndUnitCost(tail, head, 1, cost)
    flow.SetNodeSupply(0, 2)
    flow.SetNodeSupply(2, -1)
    flow.SetNodeSupply(3, -1)
    assert flow.Solve() == flow.OPTIMAL
    used = {(flow.Tail(a), flow.Head(a)) for a in range(flow.NumArcs()) if flow.Flow(a) > 0}
    assert used == {(0, 1), (0, 3), (1, 2)}
    assert flow.UnitCost(3) == 2
    # the devkit's F-score module imports it at module level
    from openlanev2.centerline.evaluation import f_score  # noqa: F401


def test_missing_devkit_names_the_exact_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openlanev2" else real(name, *a))
    with pytest.raises(MissingExtra) as err:
        OpenLaneV2Workload(OpenLaneV2Config.smoke())
    assert INSTALL_COMMAND in str(err.value) and "--no-deps openlanev2==2.1.0" in INSTALL_COMMAND


def _gt_collection():
    rng = np.random.default_rng(0)
    frames = {}
    for f in range(3):
        lanes = [np.stack([np.linspace(-30, 30, 11), np.full(11, 3.5 * k), np.zeros(11)], 1)
                 for k in range(-1, 2)]
        boxes = [np.array([[100.0 + 50 * j, 200.0], [140.0 + 50 * j, 290.0]]) for j in range(2)]
        frames[("val", "00001", str(1000 + f))] = {"annotation": {
            "lane_centerline": [{"id": i, "points": p.astype(np.float32)}
                                for i, p in enumerate(lanes)],
            "traffic_element": [{"id": 10 + j, "attribute": int(rng.integers(1, 4)),
                                 "points": b.astype(np.float32)} for j, b in enumerate(boxes)],
            "topology_lclc": np.eye(3, k=1, dtype=np.int8),
            "topology_lcte": np.array([[1, 0], [0, 1], [0, 0]], dtype=np.int8)}}
    return frames


def test_submission_of_the_ground_truth_scores_one_with_the_devkit(tmp_path):
    import pickle

    gt = _gt_collection()
    preds = []
    for key, frame in gt.items():
        ann = frame["annotation"]
        preds.append({"key": key,
                      "lanes": np.stack([lc["points"] for lc in ann["lane_centerline"]]),
                      "lane_conf": np.ones(3), "te_conf": np.ones(2),
                      "te_boxes": np.stack([te["points"].reshape(4) for te in ann["traffic_element"]]),
                      "te_attr": np.array([te["attribute"] for te in ann["traffic_element"]]),
                      "lclc": ann["topology_lclc"].astype(np.float32),
                      "lcte": ann["topology_lcte"].astype(np.float32)})
    path = tmp_path / "gt.pkl"
    path.write_bytes(pickle.dumps(gt))
    perfect = score(str(path), submission(preds))
    assert perfect["DET_l"] == pytest.approx(1.0) and perfect["DET_t"] == pytest.approx(1.0)
    assert perfect["TOP_ll"] == pytest.approx(1.0) and perfect["OLS"] == pytest.approx(1.0)
    for p in preds:  # lanes 30 m off: no centerline within the 3 m Frechet threshold
        p["lanes"] = p["lanes"] + np.array([0.0, 30.0, 0.0])
    shifted = score(str(path), submission(preds))
    assert shifted["DET_l"] == 0.0 and shifted["OLS"] < perfect["OLS"]


def test_bezier_fit_keeps_endpoints_and_is_exact_for_a_quartic():
    ctrl = np.random.default_rng(1).normal(size=(5, 3))
    curve = bernstein_matrix(201, 5) @ ctrl
    fit = fit_bezier_endpoints_fixed(curve, 5)
    assert np.allclose(fit, ctrl, atol=1e-8)
    assert np.array_equal(fit[0], curve[0]) and np.array_equal(fit[-1], curve[-1])


def test_topology_loss_original_form_feeds_probabilities_as_logits():
    cfg = OpenLaneV2Config.smoke()
    logits = torch.tensor([[[-8.0, 8.0]]])
    target = torch.tensor([[[0.0, 1.0]]])
    orig = topology_loss(logits, target, cfg)
    # the original: FocalLoss(sigmoid(logit) as the logit) with label 1-target (0 = edge)
    manual = 2.0 * focal_loss(logits.sigmoid(), target, 2.0, 0.25).mean()
    assert torch.allclose(orig, manual)
    fixed = topology_loss(logits, target, dataclasses.replace(cfg, topology_loss="logits"))
    # a confident, correct prediction: near zero when corrected; the original cannot go below
    # the focal loss of sigmoid(0)/sigmoid(1) inputs
    assert fixed < 1e-4 < orig


def test_ipm_samples_the_pixel_each_bev_point_projects_to():
    cfg = dataclasses.replace(OpenLaneV2Config.smoke(), bev_size=(5, 9), num_height_planes=1,
                              bev_range=(-4.0, -2.0, 0.0, 4.0, 2.0, 0.0))
    ipm = IPMViewTransform(cfg, 1)
    # a camera looking straight down from 10 m: ego (x, y) -> pixel (u, v) = (50 + 5y, 50 + 5x)
    l2i = torch.tensor([[0.0, 50.0, 0.0, 500.0], [50.0, 0.0, 0.0, 500.0], [0, 0, -1.0, 10.0],
                        [0, 0, 0, 1.0]]).view(1, 1, 4, 4)
    feats = torch.arange(100 * 100, dtype=torch.float32).view(1, 1, 100, 100)
    captured = {}
    ipm.out_conv.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    ipm(feats, l2i, (100, 100))
    bev = captured["x"][0, 0]  # (Y, X) sampled channel
    ys, xs = torch.linspace(-2, 2, 5), torch.linspace(-4, 4, 9)
    u, v = 50 + 5 * ys[:, None], 50 + 5 * xs[None, :]
    # align_corners=False: pixel centre i is at normalised (2i + 1) / W - 1
    expected = (v - 0.5) * 100 + (u - 0.5)
    assert torch.allclose(bev, expected, atol=1e-3)
    assert torch.equal(captured["x"][0, 1], xs.expand(5, 9))  # the grid's x appended


def _fake_batch(cfg, b=2):
    g = torch.Generator().manual_seed(0)
    h, w = cfg.input_size
    batch = {"imgs": torch.randn(b, cfg.num_cameras, 3, h, w, generator=g),
             "lidar2img": torch.eye(4).expand(b, cfg.num_cameras, 4, 4).clone(),
             "front_valid_hw": torch.tensor([[h, w]] * b),
             "front_scale": torch.tensor([[0.1, 0.1]] * b), "key": [("val", "0", str(i)) for i in range(b)]}
    batch["gt_lc"] = [torch.rand(4, 15, generator=g) * 20 - 10 for _ in range(b)]
    batch["gt_te"] = [torch.tensor([[10.0, 5.0, 30.0, 40.0]]) for _ in range(b)]
    batch["gt_te_labels"] = [torch.tensor([2]) for _ in range(b)]
    batch["gt_lclc"] = [torch.eye(4, dtype=torch.int8).roll(1, 1) for _ in range(b)]
    batch["gt_lcte"] = [torch.ones(4, 1, dtype=torch.int8) for _ in range(b)]
    return batch


def test_full_preset_is_the_published_architecture_and_logs_the_seed_loss_names():
    full = OpenLaneV2Config.full()
    assert (full.num_cameras, full.input_size, full.bev_size, full.num_height_planes) == (
        7, (1550, 2048), (50, 100), 11)
    assert (full.lr, full.weight_decay, full.grad_clip, full.warmup_iters) == (1e-4, 1e-4, 35.0, 500)
    cfg = dataclasses.replace(full, input_size=(64, 96))  # full widths, a CPU-sized input
    model = OpenLaneV2Baseline(cfg)
    assert model.view_transform.out_conv.in_channels == (128 + 3) * 11
    assert model.lc_head.query_embedding.num_embeddings == 50
    assert model.te_head.fc_cls.out_features == 13 and model.te_head.fc_reg.out_features == 4
    assert model.lc_head.fc_reg.out_features == 15
    batch = _fake_batch(cfg, b=1)  # one sample: the BEV encoder attends over 5000 cells
    out = model(batch["imgs"], batch["lidar2img"], batch["front_valid_hw"])
    assert out["lclc"].shape == (1, 50, 50) and out["lcte"].shape == (1, 50, 30)
    terms = baseline_losses(out, batch, cfg)
    assert list(terms) == SEED_LOSS_NAMES
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert model.backbone.conv1.weight.grad is not None


def test_schedule_warms_up_from_a_third_then_anneals_to_min_ratio():
    cfg = OpenLaneV2Config.full()
    wl = OpenLaneV2Workload(cfg)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = wl.build_scheduler(opt, 10_000)
    lrs = []
    for _ in range(10_000):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(cfg.lr / 3, rel=1e-3)
    assert max(lrs) == pytest.approx(cfg.lr * 0.5 * (1 + math.cos(math.pi * 500 / 10_000)), rel=1e-2)
    assert lrs[-1] == pytest.approx(cfg.lr * 1e-3, rel=0.05)
    adam = OpenLaneV2Workload(dataclasses.replace(cfg, optimizer="adam"))
    seed_opt = adam.build_optimizer(torch.nn.Linear(2, 2))
    assert type(seed_opt) is torch.optim.Adam and seed_opt.defaults["weight_decay"] == 0
    assert adam.build_scheduler(seed_opt, 100) is None


def test_seed_console_line():
    from types import SimpleNamespace

    from workloads.openlanev2_topology.console import format_seed_line

    run = SimpleNamespace(started=0.0, total_steps=5619 * 20, steps_per_epoch=5619, timer=None,
                          config=SimpleNamespace(grad_accum=2),
                          workload=SimpleNamespace(config=SimpleNamespace(batch_size=2)),
                          strategy=SimpleNamespace(world_size=1))
    row = {"step": 175, "epoch": 0, "loss": 10.458, "lc_loss_cls": 0.1268, "iter_time": 37.2,
           "data_time": 0.1, "lr": 1e-4}
    line = format_seed_line(run, row)
    assert line.startswith("Epoch 0, idx 349 / 11238, iter 174 / 5619, bs 2 *acc 2: 4, eta ")
    assert "iter_time 0:00:37, loss 10.4580, lc_loss_cls 0.1268, lr 0.0001" in line
    assert sys.modules["harness.console"] is not None
    assert OpenLaneV2Workload.console_line is not Workload.console_line  # the console uses it
