"""StreamPETR pieces: streaming sampler, sequences, host-side time deltas, memory reset,
the 29 loss names, activation checkpointing, image augmentation geometry."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from workloads.streampetr import StreamPETRWorkload
from workloads.streampetr.config import StreamPETRConfig
from workloads.streampetr.data import sequence_ids
from workloads.streampetr.sampler import StreamingBatchSampler

TINY = dataclasses.replace(
    StreamPETRConfig.smoke(), image_size=(32, 96), backbone_base_channels=8, embed_dims=32, num_query=16,
    num_propagated=8, memory_len=24, topk_proposals=8, depth_num=8, num_heads=2, ffn_dims=32, dn_groups=2,
    cams=("CAM_FRONT", "CAM_BACK"))


def test_sequence_ids_cut_each_scene_in_parts():
    infos = [dict(scene_token=s) for s in ["a"] * 5 + ["b"] * 4 + ["c"]]
    assert sequence_ids(infos, 2).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert sequence_ids(infos, 1).tolist() == [0] * 5 + [1] * 4 + [2]


def test_sampler_slots_play_sequences_in_order_and_ranks_shard():
    ids = sequence_ids([dict(scene_token=s) for s in "a" * 10 + "b" * 8 + "c" * 12 + "d" * 6], 2)
    whole = list(StreamingBatchSampler(ids, batch_size=4, world_size=1, rank=0, seed=3))
    assert len(whole) == len(ids) // 4
    for slot in range(4):
        stream = [batch[slot] for batch in whole]
        for a, b in zip(stream, stream[1:]):
            # within a sub-sequence: the next frame; a new sub-sequence starts at its first frame
            assert b == a + 1 or (ids[b] != ids[a] and (b == 0 or ids[b - 1] != ids[b]))
    # Two ranks of batch 2 own the four slots: same per-slot streams, no slot shared.
    ranks = [list(StreamingBatchSampler(ids, 2, world_size=2, rank=r, seed=3)) for r in (0, 1)]
    assert len(ranks[0]) == len(ids) // 4
    assert [r0 + r1 for r0, r1 in zip(*ranks)] == whole
    sampler = StreamingBatchSampler(ids, 4, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != whole


def _metas(seq: list[int], frame: list[int], ts: list[float]) -> dict:
    return dict(imgs=torch.zeros(len(seq), 1), intrinsics=None, img2lidar=None, ego_pose=None, ego_pose_inv=None,
                metas=[dict(sequence_id=s, frame_idx=f, timestamp=t) for s, f, t in zip(seq, frame, ts)])


def test_time_deltas_in_float64_on_the_host_and_prev_exists():
    wl = StreamPETRWorkload(TINY)
    t0 = 1533201470.448696  # absolute seconds: float32's spacing here is 128 s
    first = wl._stream_inputs(_metas([0, 5], [0, 3], [t0, t0 + 9.0]), training=True)
    assert first["prev_exists"].tolist() == [0.0, 0.0] and first["dt"].tolist() == [0.0, 0.0]
    nxt = wl._stream_inputs(_metas([0, 6], [1, 0], [t0 + 0.5, t0 + 20.0]), training=True)
    assert nxt["prev_exists"].tolist() == [1.0, 0.0]  # slot 1 moved to another sub-sequence
    assert nxt["dt"].dtype == torch.float32 and nxt["dt"][0].item() == pytest.approx(0.5, abs=1e-6)
    # eval keeps its own state: its first frame is a first frame
    assert wl._stream_inputs(_metas([0], [2], [t0 + 1.0]), training=False)["prev_exists"].tolist() == [0.0]
    off = StreamPETRWorkload(dataclasses.replace(TINY, use_memory=False))
    off._stream_inputs(_metas([0], [0], [t0]), training=True)
    assert off._stream_inputs(_metas([0], [1], [t0 + 0.5]), training=True)["prev_exists"].tolist() == [0.0]


def _inputs(b: int, prev: float, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = len(TINY.cams)
    k = torch.tensor([[40.0, 0, 48, 0], [0, 40.0, 16, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    cam2lidar = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]])
    lidar2img = k @ torch.linalg.inv(cam2lidar)
    pose = torch.eye(4)
    pose[:3, 3] = torch.tensor([2.0, 0.5, 0.0])
    return dict(imgs=torch.randn(b, n, 3, *TINY.image_size, generator=g), intrinsics=k.expand(b, n, 4, 4),
                img2lidar=torch.linalg.inv(lidar2img).expand(b, n, 4, 4), ego_pose=pose.expand(b, 4, 4),
                ego_pose_inv=torch.linalg.inv(pose).expand(b, 4, 4), prev_exists=torch.full((b,), prev),
                dt=torch.full((b,), 0.5 * prev))


def test_memory_resets_where_prev_exists_is_zero():
    from workloads.streampetr.model import StreamPETR

    torch.manual_seed(0)
    model = StreamPETR(TINY).eval()
    with torch.no_grad():
        fresh = model(_inputs(2, 0.0, seed=1))[0]["cls"]
        model(_inputs(2, 0.0, seed=2))
        carried = model(_inputs(2, 1.0, seed=1))[0]["cls"]
        reset = model(_inputs(2, 0.0, seed=1))[0]["cls"]
    assert torch.equal(reset, fresh)  # memory zeroed: as if it were the first frame
    assert not torch.allclose(carried, fresh)  # the propagated queries changed the output
    assert model.pts_bbox_head._memory[False].embedding.shape == (2, TINY.memory_len + TINY.topk_proposals, 32)


def _gt(b: int) -> tuple[list, list]:
    g = torch.Generator().manual_seed(5)
    boxes = [torch.cat([torch.rand(3, 3, generator=g) * 20 + 5, torch.rand(3, 3, generator=g) + 1,
                        torch.rand(3, 3, generator=g)], 1) for _ in range(b)]
    return boxes, [torch.tensor([0, 3, 8]) for _ in range(b)]


ORIGINAL_LOSS_NAMES = {  # exiawsh/StreamPETR issues 17 / 264: the 29 keys of a training log
    "frame_0_loss_cls", "frame_0_loss_bbox", "frame_0_dn_loss_cls", "frame_0_dn_loss_bbox",
    *(f"frame_0_d{i}.{k}" for i in range(5) for k in ("loss_cls", "loss_bbox", "dn_loss_cls", "dn_loss_bbox")),
    "frame_0_enc_loss_cls", "frame_0_enc_loss_bbox", "frame_0_enc_loss_iou", "frame_0_centers2d_losses",
    "frame_0_centerness_losses"}


def test_six_layers_log_the_original_29_loss_names():
    from workloads.streampetr.model import StreamPETR

    cfg = dataclasses.replace(TINY, num_layers=6)
    wl = StreamPETRWorkload(cfg)
    torch.manual_seed(0)
    model = StreamPETR(cfg).train()
    data = _inputs(2, 0.0)
    boxes, labels = _gt(2)
    n = len(cfg.cams) * 2
    batch = dict(data, gt_boxes=boxes, gt_labels=labels,
                 gt_bboxes2d=[torch.tensor([[10.0, 4, 30, 20]])] * n, gt_labels2d=[torch.tensor([2])] * n,
                 centers2d=[torch.tensor([[20.0, 12.0]])] * n,
                 metas=[dict(sequence_id=i, frame_idx=0, timestamp=0.0) for i in range(2)])
    terms = wl.loss(model, batch)
    assert set(terms) == ORIGINAL_LOSS_NAMES and len(terms) == 29
    assert all(torch.isfinite(v) and v > 0 for v in terms.values()), terms
    sum(terms.values()).backward()
    assert model.backbone.conv1.weight.grad is not None


def _saved_bytes_and_grads(with_cp: bool) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for backward (activation memory), and a gradient."""
    from workloads.streampetr.model import StreamPETR

    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, with_cp=with_cp, grid_mask=False, dropout=0.0, dn_groups=0, aux_2d=False)
    model = StreamPETR(cfg).train()
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(_inputs(2, 0.0))[0]
    (out["cls"].sum() + out["boxes"].sum()).backward()
    return sum(saved), model.backbone.conv1.weight.grad.clone()


def test_activation_checkpointing_keeps_less_for_backward_same_gradients():
    plain, grad = _saved_bytes_and_grads(False)
    cp, grad_cp = _saved_bytes_and_grads(True)
    assert cp < 0.6 * plain, (cp, plain)
    assert torch.allclose(grad, grad_cp, rtol=1e-4, atol=1e-6)


def test_image_augmentation_keeps_projection_consistent(tmp_path):
    """A GT centre projected with the augmented lidar2img lands on the augmented centers2d,
    for 1600x900-sized and small source images alike (resize relative to the source)."""
    pytest.importorskip("nuscenes")
    from workloads.datasets.nuscenes import write_synthetic_nuscenes
    from workloads.datasets.nuscenes_streampetr import create_streampetr_infos
    from workloads.streampetr.data import StreamDataParams, StreamPETRDataset

    for wh in ((320, 180), (1600, 900)):
        root = write_synthetic_nuscenes(tmp_path / f"db{wh[0]}", num_scenes=2, samples_per_scene=2, image_size=wh,
                                        objects_per_scene=10, lidar_points_per_ring=8)
        infos = create_streampetr_infos(root, "v1.0-mini")["train"]
        ds = StreamPETRDataset(infos, root, StreamDataParams(final_dim=(64, 176), rot_range=(0, 0),
                                                             scale_ratio_range=(1, 1)), train=True)
        torch.manual_seed(1)
        item = ds[1]
        assert item["imgs"].shape == (6, 3, 64, 176)
        info = infos[1]
        hits = 0
        for i in range(len(ds.params.cams)):
            for c2d in item["centers2d"][i]:
                pts = np.asarray(info["gt_boxes"][:, :3])
                uvw = np.c_[pts, np.ones(len(pts))] @ item["lidar2img"][i].double().numpy().T
                uv = uvw[:, :2] / uvw[:, 2:3]
                assert np.min(np.hypot(*(uv - c2d.numpy()).T)) < 0.05
                hits += 1
        assert hits > 0


def test_ray_distance_prior_peaks_on_the_ray_through_the_reference_point():
    """A camera at the origin looking along +x (LIDAR frame): the token whose ray passes
    through a reference point gets the largest bias (~0); tokens whose rays miss it by d
    metres get -(d / sigma)^2."""
    from workloads.streampetr.head import StreamPETRHead

    cfg = dataclasses.replace(TINY, geometry_prior_m=2.0, cams=("CAM_FRONT",))
    head = StreamPETRHead(cfg)
    fx, cx, cy = 40.0, 48.0, 16.0  # 96x32 image, feature map 6x2 at stride 16
    cam2img = torch.tensor([[fx, 0, cx, 0], [0, fx, cy, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    lidar2cam = torch.tensor([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])  # x fwd -> z
    img2lidar = torch.linalg.inv(cam2img @ lidar2cam)[None, None]
    _, _, ray_ends = head.position_embedding((1, 1, cfg.embed_dims, 2, 6), (32, 96), img2lidar,
                                             cam2img[None, None])
    u = (torch.arange(6) + 0.5) * 16  # token column centres
    lateral = -(u - cx) / fx * 20.0  # the y of each column's ray at x = 20 m
    lo, hi = torch.tensor(cfg.pc_range[:3]), torch.tensor(cfg.pc_range[3:])
    point = torch.tensor([20.0, float(lateral[4]), 0.0])  # on column 4's rays
    bias = head.ray_distance_prior(((point - lo) / (hi - lo))[None, None], ray_ends)  # (1, 1, 1, 12)
    per_column = bias[0, 0, 0].view(2, 6)
    assert per_column.argmax(dim=1).tolist() == [4, 4]
    assert per_column[:, 4].abs().max() < 1e-3
    assert per_column[0, 2].item() == pytest.approx(-((lateral[2] - lateral[4]).abs().item() / 2.0) ** 2, rel=0.05)


def test_backbone_statistics_are_frozen_only_over_loaded_weights(tmp_path):
    """The published config freezes BN statistics (norm_eval) of its pretrained backbone;
    from random weights they would stay at their initial values for the whole run."""
    from torch import nn

    from harness.start_weights import load_part
    from workloads.layers.pretrained import RESNET_LAYOUTS
    from workloads.streampetr.model import StreamPETR

    cfg = StreamPETRConfig.smoke()
    cfg = dataclasses.replace(cfg, backbone_norm_eval=True)
    random_init = StreamPETR(cfg).train()
    assert all(m.training for m in random_init.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    torch.save(random_init.backbone.state_dict(), tmp_path / "r.pth")
    pretrained = StreamPETR(dataclasses.replace(cfg, backbone_weights=str(tmp_path / "r.pth")))
    load_part(pretrained.backbone, tmp_path / "r.pth", RESNET_LAYOUTS, part="backbone",
              option="backbone_weights")
    pretrained.train()
    bns = [m for m in pretrained.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
