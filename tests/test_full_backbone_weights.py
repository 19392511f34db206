"""Every workload's `full` model takes its published backbone's pretrained file in the layout
the original loads (torchvision/mmdet ResNet names, mmdet's Darknet-53), detected and loaded
strictly by the host, every tensor where it belongs (issue 22's first "done when" line; the
same loading path a run takes, harness/start_weights.py, without the minutes of a full step)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from harness import plugins
from harness.errors import UsageError
from harness.start_weights import load_start_weights
from tests.test_param_counts import check_parameter_count
from workloads.layers.test_pretrained import _mmdet_darknet_names

WORKLOADS = ("yolov3", "bevdepth", "matrixvt", "streampetr", "openlanev2", "lanes")


def _original_layout(name: str, state: dict[str, torch.Tensor]) -> tuple[dict, str]:
    """The backbone's tensors under the names of the file the original config loads."""
    if name == "yolov3":
        return _mmdet_darknet_names(state), "mmdet-darknet53"
    out = {re.sub(r"^stages\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", k): v
           for k, v in state.items()}
    width = state["stages.3.0.conv1.weight"].shape[1] if "stages.3.0.conv3.weight" not in state \
        else state["stages.3.0.conv3.weight"].shape[0]
    out["fc.weight"], out["fc.bias"] = torch.randn(1000, width), torch.randn(1000)  # the classifier
    return out, "torchvision-resnet"


@pytest.mark.parametrize("name", WORKLOADS)
def test_full_backbone_takes_the_originals_pretrained_file(name: str, tmp_path: Path) -> None:
    cls = plugins.get_workload(name)
    full = cls.presets()["full"]
    torch.manual_seed(0)
    workload = cls(dataclasses.replace(full, backbone_weights=str(tmp_path / "pretrained.pth")))
    model = workload.build_model()  # one full model (seconds each): the file's values are drawn
    check_parameter_count(name, model)  # beside the original's (tests/test_param_counts.py)
    backbone = workload.backbone(model)
    assert backbone is not None
    expected = {k: torch.randn_like(v) if v.is_floating_point() else v.clone()
                for k, v in backbone.state_dict().items()}
    state, layout = _original_layout(name, expected)
    path = tmp_path / "pretrained.pth"
    torch.save({"state_dict": state} if name == "yolov3" else state, path)

    (entry,) = load_start_weights(workload, model)
    assert entry["layout"] == layout and entry["part"] == "backbone"
    loaded = workload.backbone(model)
    assert loaded is not None
    got = loaded.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items()
               if not k.endswith("num_batches_tracked"))
    assert entry["keys_loaded"] == len(state) - (0 if name == "yolov3" else 2)

    # The other original's file: one line naming the closest layout and the keys.
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    bad = cls(dataclasses.replace(full, backbone_weights=str(other)))
    with pytest.raises(UsageError, match=r"other\.pth: backbone_weights does not fit the "
                                         r"backbone \(closest layout .*missing: "):
        load_start_weights(bad, model)
