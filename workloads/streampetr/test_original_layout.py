"""The original StreamPETR's R50 state dict (streampetr_r50_manifest.txt, read from
exiawsh/StreamPETR's code) against `streampetr_key` and our `full` model.

No original code is needed: the test rebuilds a state dict of random tensors from the
manifest's names and shapes (the shared cls/reg branch listed six times as one tensor, the
constant parameters with the original's values). What names alone cannot map (the packed
attention projections, the FocalHead's class-row order) the layout's transform does
(weights.py); the whole file then loads strictly into the `full` model.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.start_weights import load_model_weights, read_manifest, read_state_dict
from workloads.streampetr.config import StreamPETRConfig
from workloads.streampetr.head import StreamPETRHead
from workloads.streampetr.model import StreamPETR
from workloads.streampetr.transformer import Attention
from workloads.streampetr.weights import (
    FOCAL_CLASS_ROWS,
    STREAMPETR_MMDET3D,
    split_in_proj,
    streampetr_key,
    to_our_tensors,
)

MANIFEST = Path(__file__).with_name("streampetr_r50_manifest.txt")
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_CONSTANTS = ("code_weights", "match_costs", "pc_range", "position_range", "coords_d")
_LAYERS = range(6)
PACKED = {f"pts_bbox_head.transformer.decoder.layers.{i}.attentions.{a}.attn.in_proj_{w}"
          for i in _LAYERS for a in (0, 1) for w in ("weight", "bias")}
OURS_QKV = {f"pts_bbox_head.decoder.layers.{i}.{attn}.{p}.{w}" for i in _LAYERS
            for attn in ("self_attn", "cross_attn") for p in "qkv" for w in ("weight", "bias")}


def _manifest() -> list[tuple[str, tuple[int, ...]]]:
    return read_manifest(MANIFEST)[""]


def _original_state(cfg: StreamPETRConfig) -> dict[str, torch.Tensor]:
    """A state dict as the original writes it: random weights, BN statistics of their kind,
    the branch shared by the six decoder outputs as one tensor, constants as the head sets them."""
    gen = torch.Generator().manual_seed(0)
    pr = cfg.position_range
    index = torch.arange(cfg.depth_num).float()  # streampetr_head.py:218-222 (LID)
    bin_size = (pr[3] - cfg.depth_start) / (cfg.depth_num * (1 + cfg.depth_num))
    constants = {"code_weights": torch.tensor(cfg.code_weights),
                 "match_costs": torch.tensor(cfg.code_weights),  # match_costs=None: code_weights
                 "pc_range": torch.tensor(cfg.pc_range), "position_range": torch.tensor(pr),
                 "coords_d": cfg.depth_start + bin_size * index * (index + 1)}
    sd: dict[str, torch.Tensor] = {}
    for name, shape in _manifest():
        leaf = name.rsplit(".", 1)[1]
        head_leaf = name.removeprefix("pts_bbox_head.")
        for kind in ("cls", "reg"):
            first = f"pts_bbox_head.{kind}_branches.0."
            if name.startswith(f"pts_bbox_head.{kind}_branches.") and not name.startswith(first):
                # the same module (streampetr_head.py:254-257)
                sd[name] = sd[first + name.split(".", 3)[3]]
                break
        else:
            if head_leaf in constants:
                sd[name] = constants[head_leaf]
            elif leaf == "num_batches_tracked":
                sd[name] = torch.randint(0, 10_000, shape, generator=gen, dtype=torch.int64)
            elif leaf == "running_var":
                sd[name] = torch.rand(shape, generator=gen) + 0.5
            else:
                sd[name] = torch.randn(shape, generator=gen) * 0.02
            assert tuple(sd[name].shape) == shape, name
    return sd


@pytest.fixture(scope="module")
def full() -> tuple[StreamPETRConfig, dict[str, torch.Tensor]]:
    cfg = StreamPETRConfig.full()
    torch.manual_seed(0)
    return cfg, StreamPETR(cfg).eval().state_dict()


@pytest.fixture(scope="module")
def original_file(full, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint as the original's mmcv save_checkpoint writes it."""
    path = tmp_path_factory.mktemp("streampetr") / "stream_petr_r50_flash_704_bs2_seq_24e.pth"
    torch.save({"meta": {"mmdet3d_version": "1.0.0rc6", "epoch": 24},
                "state_dict": _original_state(full[0])}, path)
    return path


def test_manifest_maps_onto_the_full_model_exactly(full) -> None:
    cfg, own = full
    rows = _manifest()
    assert len(rows) == 591
    shared = [n for n, _ in rows
              if n.split(".")[1] in ("cls_branches", "reg_branches") and n.split(".")[2] != "0"]
    params = sum(math.prod(s) for n, s in rows if not n.endswith(_BN_BUFFERS) and n not in shared)
    assert (len(shared), params) == (80, 37_259_345)
    ours = sum(v.numel() for k, v in own.items() if not k.endswith(_BN_BUFFERS))
    # The original's head constants (10 + 10 + 6 + 6 + 64) are config-derived buffers here.
    assert params - ours == 10 + 10 + 6 + 6 + 64

    sd = _original_state(cfg)
    renamed = {k: streampetr_key(k) for k in sd}
    ignored = sorted(k for k, v in renamed.items() if v is None)
    assert ignored == sorted(shared + [f"pts_bbox_head.{c}" for c in _CONSTANTS])
    # By names alone the packed projections cannot land: the layout's transform splits them.
    mapped = {v: k for k, v in renamed.items() if v is not None}
    assert {mapped[k] for k in set(mapped) - set(own)} == PACKED
    assert set(own) - set(mapped) == OURS_QKV
    split = to_our_tensors(sd)
    mapped = {streampetr_key(k): k for k in split if streampetr_key(k) is not None}
    assert len(mapped) == len(split) - len(ignored)  # no two original tensors land on one of ours
    assert set(mapped) == set(own)
    bad = [(k, tuple(split[mapped[k]].shape), tuple(own[k].shape)) for k in own
           if split[mapped[k]].shape != own[k].shape or split[mapped[k]].dtype != own[k].dtype]
    assert not bad

    # The constants the map drops equal ours (head buffers and config).
    model_head = StreamPETRHead(cfg)
    for name in ("pc_range", "position_range", "coords_d"):
        torch.testing.assert_close(sd[f"pts_bbox_head.{name}"], getattr(model_head, name).float())


def test_an_original_file_loads_every_tensor_where_it_belongs(full, original_file: Path) -> None:
    """The whole file, strictly, through the host's loader: projections split as
    nn.MultiheadAttention and FlashMHA read [q; k; v], the FocalHead's class rows reordered
    from the converter's label order to the config's, the shared branch from its index 0."""
    cfg, path = full[0], original_file
    sd = read_state_dict(path, "x")
    model = StreamPETR(cfg).eval()
    assert load_model_weights(model, sd, path, (STREAMPETR_MMDET3D,)) == "streampetr-mmdet3d"
    got = model.state_dict()
    packed = sd["pts_bbox_head.transformer.decoder.layers.3.attentions.1.attn.in_proj_weight"]
    assert torch.equal(got["pts_bbox_head.decoder.layers.3.cross_attn.k.weight"], packed[256:512])
    assert torch.equal(got["pts_bbox_head.cls_branch.6.bias"],
                       sd["pts_bbox_head.cls_branches.5.6.bias"])
    assert torch.equal(got["img_roi_head.shared_cls.0.bias"], sd["img_roi_head.shared_cls.0.bias"])
    cls_w = sd["img_roi_head.cls.weight"]
    for ours, theirs in enumerate(FOCAL_CLASS_ROWS):
        assert torch.equal(got["img_roi_head.cls.weight"][ours], cls_w[theirs])
    reg_w = sd["pts_bbox_head.reg_branches.0.4.weight"]  # sizes (l, w, h) -> ours (w, l, h)
    assert torch.equal(got["pts_bbox_head.reg_branch.4.weight"][3], reg_w[4])
    assert torch.equal(got["pts_bbox_head.reg_branch.4.weight"][4], reg_w[3])
    for key, value in to_our_tensors(sd).items():
        name = streampetr_key(key)
        if name is not None and not name.startswith("img_roi_head.cls."):
            assert torch.equal(got[name], value), key


def test_split_attention_equals_torch_multihead_attention() -> None:
    """Our Attention with `split_in_proj`'s thirds computes what the original's
    nn.MultiheadAttention (mmcv MultiheadAttention.attn, the self-attention) computes."""
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(64, 8, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    prefix = "pts_bbox_head.transformer.decoder.layers.0.attentions.0.attn."
    ours_prefix = "pts_bbox_head.decoder.layers.0.self_attn."
    state = split_in_proj({prefix + k: v for k, v in ref.state_dict().items()})
    renamed = {streampetr_key(k): v for k, v in state.items()}
    assert all(k.startswith(ours_prefix) for k in renamed)
    ours = Attention(64, 8, 0.0).eval()
    ours.load_state_dict({k[len(ours_prefix):]: v for k, v in renamed.items()})  # strict
    q, kv = torch.randn(2, 5, 64), torch.randn(2, 7, 64)
    blocked = torch.rand(5, 7) > 0.7
    blocked[:, 0] = False
    with torch.no_grad():
        want = ref(q, kv, kv, attn_mask=blocked, need_weights=False)[0]
        got = ours(q, kv, kv, blocked)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
