"""Workload config values are checked when the config is built, before any data is touched
(issue 15 item 1): the generic finite / range-by-name check over every numeric field, and each
workload config's own validate(). One line naming the field, exit 2, nothing written."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import check_config_values
from harness.errors import ConfigError

USAGE = 2

# (workload, --set value, the piece of the line that names the field and the rule)
CASES: list[tuple[str, str, str]] = [
    ("yolov3", "input_size=100", "input_size=100: must be a multiple of 32"),
    ("yolov3", "num_classes=0", "num_classes=0: must be > 0"),
    ("yolov3", "lr=nan", "lr=nan: must be finite"),
    ("yolov3", "lr=-0.1", "lr=-0.1: must be >= 0"),
    ("yolov3", "weight_decay=-1", "weight_decay=-1.0: must be >= 0"),
    ("yolov3", "batch_size=0", "batch_size=0: must be > 0"),
    ("yolov3", "eval_batch_size=-2", "eval_batch_size=-2: must be > 0"),
    ("yolov3", "steps=0", "steps=0: must be > 0"),
    ("yolov3", "flip_prob=1.5", "flip_prob=1.5: must be in [0, 1]"),
    ("yolov3", "grad_clip=inf", "grad_clip=inf: must be finite"),
    ("yolov3", "nms_iou=2", "nms_iou=2.0: must be in [0, 1]"),
    ("yolov3", "train_scale_range=416,320", "train_scale_range=(416, 320)"),
    ("bevdepth", "image_size=64,170", "image_size=(64, 170): must be multiples of "
                                      "downsample_factor 16"),
    ("bevdepth", "d_bound=58,2,0.5", "d_bound=(58.0, 2.0, 0.5): must be (low, high, step)"),
    ("bevdepth", "lr_per_sample=-1e-3", "lr_per_sample=-0.001: must be >= 0"),
    ("bevdepth", "bbox_loss_weight=-1", "bbox_loss_weight=-1.0: must be >= 0"),
    ("matrixvt", "num_keys=0", "num_keys=0: must be > 0"),
    ("matrixvt", "image_size=0,176", "image_size=(0, 176): must be > 0"),
    ("lanes", "input_size=321,800", "input_size=(321, 800): must be multiples of hm_stride"),
    ("lanes", "hm_stride=4", "hm_stride=4: must be 8"),
    ("lanes", "crop_top=1.0", "crop_top=1.0: must be in [0, 1)"),
    ("lanes", "num_workers=-1", "num_workers=-1: must be >= 0"),
    ("openlanev2", "embed_dims=30", "embed_dims=30: must be a multiple of num_heads"),
    ("openlanev2", "lr=inf", "lr=inf: must be finite"),
    ("openlanev2", "bev_range=50,-25,-3,-50,25,2", "bev_range=(50.0, -25.0, -3.0, -50.0"),
    ("streampetr", "image_size=60,176", "image_size=(60, 176): must be multiples of 16"),
    ("streampetr", "topk_proposals=1000", "topk_proposals=1000: must be <= num_query"),
    ("streampetr", "dropout=1.5", "dropout=1.5: must be in [0, 1]"),
    ("tiny", "lr=nan", "lr=nan: must be finite"),
    ("tiny", "steps=" + "9" * 400, "9: must be finite"),  # beyond any float
    # issue 24: sizes, counts, caps and thresholds by their names; an average's decay
    ("streampetr", "num_heads=0", "num_heads=0: must be > 0"),
    ("streampetr", "embed_dims=0", "embed_dims=0: must be > 0"),
    ("streampetr", "num_propagated=-1", "num_propagated=-1: must be >= 0"),
    ("streampetr", "dn_groups=-1", "dn_groups=-1: must be >= 0"),
    ("openlanev2", "embed_dims=0", "embed_dims=0: must be > 0"),
    ("openlanev2", "num_heads=0", "num_heads=0: must be > 0"),
    ("openlanev2", "synthetic_image_scale=0", "synthetic_image_scale=0.0: must be > 0"),
    ("lanes", "base_channels=0", "base_channels=0: must be > 0"),
    ("lanes", "cluster_thr=-1", "cluster_thr=-1.0: must be >= 0"),
    ("matrixvt", "matrixvt_mid_channels=0", "matrixvt_mid_channels=0: must be > 0"),
    ("bevdepth", "max_objs=0", "max_objs=0: must be > 0"),
    ("bevdepth", "ema_decay=1", "ema_decay=1.0: must be in [0, 1)"),
]


@pytest.mark.parametrize("workload,setting,says", CASES,
                         ids=[f"{w}-{s[:30]}" for w, s, _ in CASES])
def test_bad_config_value_is_one_line_before_any_data(
        workload: str, setting: str, says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_DEBUG", raising=False)
    out, cache = tmp_path / "out", tmp_path / "cache"
    code = main(["run", workload, "--steps", "1", "--set", setting, "--out", str(out),
                 "--cache-dir", str(cache)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == USAGE, lines
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith(f"harness: error: workload {workload} config "), lines[0]
    assert says in lines[0], lines[0]
    assert "--set " in lines[0]  # the fix
    assert not out.exists() and not cache.exists()  # refused before any data or folder
    assert not (tmp_path / "runs").exists()


def test_every_caller_that_builds_a_workload_gets_the_check() -> None:
    """Runs, eval, the benchmark step and the numerics check build workloads through
    harness/prepare.py; a direct option (here eval_batch_size) is checked as the field."""
    from harness.config import RunConfig
    from harness.prepare import resolve_workload

    with pytest.raises(ConfigError, match="workload tiny config eval_batch_size=0: must be > 0"):
        resolve_workload(RunConfig(workload="tiny", eval_batch_size=0))


@dataclasses.dataclass(frozen=True)
class _Inner:
    warmup_iters: int = 5
    scales: tuple[float, ...] = (1.0, 2.0)


@dataclasses.dataclass(frozen=True)
class _Outer:
    lr: float = 0.1
    inner: _Inner = _Inner()
    name: str = "x"
    offsets: tuple[float, ...] = (-1.0, 1.0)  # no range implied by the name: negatives fine
    flag: bool = True

    def validate(self) -> None:
        if self.lr > 1:
            raise ConfigError.bad_value("lr", self.lr, "must be <= 1")


def test_generic_check_reaches_nested_fields_and_tuples_and_calls_validate() -> None:
    check_config_values(_Outer())  # the defaults pass
    with pytest.raises(ConfigError, match=r"config inner\.warmup_iters=-1: must be >= 0"):
        check_config_values(_Outer(inner=_Inner(warmup_iters=-1)))
    with pytest.raises(ConfigError, match=r"inner\.scales=\(1\.0, nan\): must be finite"):
        check_config_values(_Outer(inner=_Inner(scales=(1.0, float("nan")))))
    with pytest.raises(ConfigError, match="offsets=.*must be finite"):
        check_config_values(_Outer(offsets=(float("-inf"), 0.0)))
    with pytest.raises(ConfigError, match="lr=2.0: must be <= 1") as info:
        check_config_values(_Outer(lr=2.0))
    assert info.value.field == "lr" and info.value.exit_code == USAGE


def test_every_preset_of_every_workload_passes_its_own_checks() -> None:
    from harness import plugins

    for name in ("yolov3", "bevdepth", "matrixvt", "lanes", "openlanev2", "streampetr"):
        for cfg in plugins.get_workload(name).presets().values():
            check_config_values(cfg)  # a preset that fails would refuse every run of it


def test_a_plugin_config_that_is_no_dataclass_gets_only_its_own_validate() -> None:
    class PlainConfig:
        lr = float("nan")  # not looked at: no dataclass fields to walk

        def validate(self) -> None:
            raise ConfigError.bad_value("depth", -1, "must be >= 1")

    with pytest.raises(ConfigError, match="config depth=-1: must be >= 1"):
        check_config_values(PlainConfig())
