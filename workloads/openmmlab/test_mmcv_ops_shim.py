"""The import shim: against a stand-in `mmcv` package (always), and against the real
mmcv-lite + mmdet where they import (`original`: PYTHONPATH=/work/mmdet_pkgs)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from workloads.openmmlab import kernels, mmcv_ops_shim, ops


def _mmcv_modules() -> dict[str, Any]:
    return {k: v for k, v in sys.modules.items() if k == "mmcv" or k.startswith("mmcv.")}


@pytest.fixture
def fake_mmcv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package named mmcv with no compiled extension, first on sys.path; whatever mmcv
    modules were imported before, and the shim if it was installed (an `original` test
    installs it for the session), come back afterwards."""
    saved, was_installed = _mmcv_modules(), mmcv_ops_shim.installed()
    for name in saved:
        del sys.modules[name]
    if was_installed:
        sys.meta_path.remove(mmcv_ops_shim._FINDER)
    (tmp_path / "mmcv").mkdir()
    (tmp_path / "mmcv" / "__init__.py").write_text("__version__ = '0.0-test'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path / "mmcv"
    mmcv_ops_shim.uninstall()
    for name in _mmcv_modules():
        del sys.modules[name]
    sys.modules.update(saved)
    if was_installed:
        sys.meta_path.insert(0, mmcv_ops_shim._FINDER)


def test_install_resolves_mmcv_ops_to_the_portable_ops(fake_mmcv: Path) -> None:
    assert not mmcv_ops_shim.compiled_ops_available()
    assert mmcv_ops_shim.install() == "installed"
    assert mmcv_ops_shim.install() == "already installed"  # idempotent
    assert sys.meta_path.count(mmcv_ops_shim._FINDER) == 1

    import mmcv.ops
    from mmcv.ops import DeformConv2d, RoIAlign, batched_nms, nms
    from mmcv.ops.modulated_deform_conv import ModulatedDeformConv2d
    from mmcv.ops.nms import batched_nms as from_submodule
    from mmcv.ops.roi_align import roi_align

    assert nms is ops.nms and batched_nms is from_submodule is ops.batched_nms
    assert DeformConv2d is ops.DeformConv2d and ModulatedDeformConv2d is ops.ModulatedDeformConv2d
    assert RoIAlign is ops.RoIAlign and roi_align is ops.roi_align
    # A name that is both an op and a submodule is the op on the package, as in mmcv.
    assert mmcv.ops.nms is ops.nms and mmcv.ops.point_sample is ops.point_sample
    assert sys.modules["mmcv.ops.nms"].nms is ops.nms
    import mmcv.ops.point_sample  # noqa: F401  (importing it again changes nothing)
    assert mmcv.ops.point_sample is ops.point_sample
    from mmcv.ops.merge_cells import SumCell  # submodule-only names stay there

    assert SumCell is ops.SumCell and "SumCell" not in mmcv.ops.__all__
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mmcv.ops.no_such_op")
    with pytest.raises(ImportError):
        exec("from mmcv.ops import no_such_op", {})
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    dets, keep = mmcv.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


def test_uninstall_leaves_sys_modules_as_without_the_shim(fake_mmcv: Path) -> None:
    before = set(sys.modules)
    mmcv_ops_shim.install()
    import mmcv.ops  # noqa: F401

    assert "mmcv.ops.roi_align" in sys.modules
    mmcv_ops_shim.uninstall()
    assert not mmcv_ops_shim.installed()
    assert not [m for m in sys.modules if m.startswith("mmcv.ops")]
    assert "ops" not in vars(sys.modules["mmcv"])
    assert set(_mmcv_modules()) - before <= {"mmcv"}  # the stand-in package itself only
    with pytest.raises(ModuleNotFoundError):  # the stand-in mmcv has no ops of its own
        importlib.import_module("mmcv.ops")


def test_a_stand_in_extension_loads_and_fails_only_when_a_kernel_is_called(
        fake_mmcv: Path) -> None:
    """mmdet3d loads `mmcv._ext` itself at import (voxelize.py: load_ext('_ext', [...]))."""
    assert mmcv_ops_shim.install() == "installed"
    import mmcv

    ext = importlib.import_module("mmcv._ext")
    assert mmcv_ops_shim.is_standin(ext) and ext.PORTABLE_STANDIN is True
    for kernel in ("hard_voxelize_forward", "dynamic_voxelize_forward"):
        assert hasattr(ext, kernel)  # what load_ext asserts
    with pytest.raises(NotImplementedError, match="mmcv._ext.hard_voxelize_forward"):
        ext.hard_voxelize_forward(torch.zeros(1))
    with pytest.raises(AttributeError):
        ext.__wrapped__  # dunder look-ups (inspect, pickle) are not kernels
    # The stand-in is not a compiled extension, loaded or not.
    assert not mmcv_ops_shim.compiled_ops_available()
    assert mmcv_ops_shim.install() == "already installed"
    mmcv_ops_shim.uninstall()
    assert "mmcv._ext" not in sys.modules and "_ext" not in vars(mmcv)
    assert not mmcv_ops_shim.compiled_ops_available()
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mmcv._ext")


def test_compiled_mmcv_is_left_alone_unless_forced(fake_mmcv: Path) -> None:
    (fake_mmcv / "_ext.py").write_text("COMPILED = True\n")
    (fake_mmcv / "ops.py").write_text("REAL = True\n")
    importlib.invalidate_caches()
    assert mmcv_ops_shim.compiled_ops_available()
    assert mmcv_ops_shim.install() == "compiled" and not mmcv_ops_shim.installed()
    import mmcv.ops

    assert mmcv.ops.REAL
    assert mmcv_ops_shim.install(force=True) == "installed"
    import mmcv.ops as forced

    assert forced.nms is ops.nms and not hasattr(forced, "REAL")
    import mmcv._ext  # a forced install never shadows the compiled extension

    assert mmcv._ext.COMPILED and not mmcv_ops_shim.is_standin(mmcv._ext)
    assert mmcv_ops_shim.compiled_ops_available()
    mmcv_ops_shim.uninstall()
    assert sys.modules["mmcv._ext"].COMPILED
    import mmcv.ops as again

    assert again.REAL  # the real module is found again


# ------------------------------------------------------------- the real mmcv-lite + mmdet
def _mmdet() -> Any:
    pytest.importorskip("mmdet")
    if mmcv_ops_shim.install() == "compiled":
        pytest.skip("the compiled mmcv ops are importable here: the shim stands aside")
    return importlib.import_module("mmdet")


@pytest.mark.original
def test_mmdet_yolov3_builds_and_predicts_on_the_portable_ops() -> None:
    _mmdet()
    import mmdet.models  # noqa: F401  (imports mmcv.ops' roi_align, nms, DCN...)
    import mmdet.structures  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.structures import InstanceData

    register_all_modules()
    config = Path(str(importlib.import_module("mmdet").__file__)).parent / (
        ".mim/configs/yolo/yolov3_d53_8xb8-ms-608-273e_coco.py")
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None  # random weights: no download
    # Random weights score low: keep every candidate, so NMS has thousands to sweep.
    cfg.model.test_cfg.update(conf_thr=0.0, score_thr=0.0)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    image = torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8)
    sample = DetDataSample(metainfo={"img_shape": (320, 320), "ori_shape": (320, 320),
                                     "scale_factor": (1.0, 1.0)})
    kernels.clear_kernels()
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": [image], "data_samples": [sample]}, False)
        results = model.predict(data["inputs"], data["data_samples"])
    found = results[0].pred_instances
    assert isinstance(found, InstanceData)
    n = len(found.bboxes)
    assert n == cfg.model.test_cfg.max_per_img  # 100 of 6300 candidates
    assert found.bboxes.shape == (n, 4) and found.scores.shape == (n,)
    assert found.labels.shape == (n,) and int(found.labels.max()) < 80
    assert kernels.used_implementations() == {"nms": "portable"}  # via batched_nms


@pytest.mark.original
def test_mmdet_resnet_with_dcnv2_builds_from_the_registered_name() -> None:
    _mmdet()
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    # mmdet's DCN backbones: Bottleneck ResNets (BasicBlock refuses dcn); a narrow one.
    backbone = MODELS.build(dict(type="ResNet", depth=50, base_channels=8, out_indices=(3,),
                                 dcn=dict(type="DCNv2", deform_groups=1,
                                          fallback_on_stride=False),
                                 stage_with_dcn=(False, False, False, True)))
    assert isinstance(backbone.layer4[0].conv2, ops.ModulatedDeformConv2dPack)
    assert "layer4.0.conv2.conv_offset.weight" in backbone.state_dict()
    out = backbone(torch.randn(1, 3, 64, 64))
    assert out[0].shape == (1, 256, 2, 2)


def test_against_the_compiled_mmcv_ops_where_they_exist() -> None:
    pytest.importorskip("mmcv._ext")  # not on this machine: mmcv-lite has no compiled ops
    real = importlib.import_module("mmcv.ops")
    torch.manual_seed(0)
    xy = torch.rand(200, 2) * 60
    boxes = torch.cat((xy, xy + torch.rand(200, 2) * 30 + 1), 1)
    scores = torch.rand(200)
    assert torch.equal(real.nms(boxes, scores, 0.5)[1], ops.nms(boxes, scores, 0.5)[1])
    rotated = torch.cat((xy, torch.rand(200, 2) * 10 + 1, torch.rand(200, 1) * 3), 1)
    torch.testing.assert_close(real.box_iou_rotated(rotated, rotated),
                               ops.box_iou_rotated(rotated, rotated), atol=1e-4, rtol=0)
    x, offset = torch.randn(1, 4, 8, 8), torch.randn(1, 18, 8, 8)
    mask, weight = torch.rand(1, 9, 8, 8), torch.randn(6, 4, 3, 3)
    torch.testing.assert_close(real.modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1),
                               ops.modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1),
                               atol=1e-4, rtol=1e-4)
