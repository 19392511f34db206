"""Local pretrained backbone weights: torchvision ResNet and mmdet Darknet layouts."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from harness.errors import UsageError
from workloads.layers.darknet import Darknet
from workloads.layers.pretrained import load_backbone_weights
from workloads.layers.resnet import ResNet


def _torchvision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ResNet state dict under torchvision's names, with its classifier, as
    torchvision.models.resnet18().state_dict() spells them."""
    out = {re.sub(r"^stages\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", k): v.clone()
           for k, v in state.items()}
    out["fc.weight"], out["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return out


def _mmdet_darknet_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    def rename(k: str) -> str:
        part = {"0": "conv", "1": "bn"}
        if m := re.match(r"^stem\.([01])\.(.*)$", k):
            return f"conv1.{part[m.group(1)]}.{m.group(2)}"
        if m := re.match(r"^stages\.(\d+)\.0\.([01])\.(.*)$", k):
            return f"conv_res_block{int(m.group(1)) + 1}.conv.{part[m.group(2)]}.{m.group(3)}"
        m = re.match(r"^stages\.(\d+)\.(\d+)\.(conv[12])\.([01])\.(.*)$", k)
        assert m, k
        return (f"conv_res_block{int(m.group(1)) + 1}.res{int(m.group(2)) - 1}.{m.group(3)}."
                f"{part[m.group(4)]}.{m.group(5)}")

    return {rename(k): v.clone() for k, v in state.items()}


def test_torchvision_resnet_layout_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = ResNet(depth=18)
    for p in source.parameters():
        p.data.normal_()
    state = _torchvision_names(source.state_dict())
    assert "layer4.1.bn2.running_var" in state and "stages.0.0.conv1.weight" not in state
    del state["bn1.num_batches_tracked"]  # old torchvision files have none
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    target = ResNet(depth=18)
    entry = load_backbone_weights(target, path)
    assert entry["layout"] == "torchvision-resnet" and entry["keys_ignored"] == 2  # fc
    assert entry["keys_loaded"] == len(state) - 2 and len(entry["sha256"]) == 64
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key
    # mmdet checkpoints: {"state_dict": {"backbone.layer1...": ...}}
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, tmp_path / "mmdet.pth")
    entry = load_backbone_weights(ResNet(depth=18), tmp_path / "mmdet.pth")
    assert entry["layout"] == "torchvision-resnet"


def test_mmdet_darknet_layout_loads(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = Darknet(depths=(1, 2, 1, 1, 1), width=0.25)
    for p in source.parameters():
        p.data.normal_()
    state = _mmdet_darknet_names(source.state_dict())
    assert "conv_res_block2.res1.conv2.bn.weight" in state and "conv1.conv.weight" in state
    torch.save(state, tmp_path / "darknet.pth")
    target = Darknet(depths=(1, 2, 1, 1, 1), width=0.25)
    assert load_backbone_weights(target, tmp_path / "darknet.pth")["layout"] == "mmdet-darknet53"
    x = torch.randn(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(source.eval()(x), target.eval()(x)))


def test_mismatching_files_name_the_key(tmp_path: Path) -> None:
    torch.save(_torchvision_names(ResNet(depth=18).state_dict()), tmp_path / "r18.pth")
    with pytest.raises(UsageError, match=r"r18\.pth: backbone_weights does not fit the backbone "
                       r"\(closest layout torchvision-resnet.*missing: .*stages\.0\.0\.bn3"):
        load_backbone_weights(ResNet(depth=50), tmp_path / "r18.pth")
    with pytest.raises(UsageError, match=r"r18\.pth.*shape \(checkpoint vs model\): conv1\.weight"):
        load_backbone_weights(ResNet(depth=18, base_channels=32), tmp_path / "r18.pth")
    with pytest.raises(UsageError, match="no file at"):
        load_backbone_weights(ResNet(depth=18), tmp_path / "missing.pth")
