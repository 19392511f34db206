"""Starting weights (issue 22 items 1 and 5): files in the originals' layouts load strictly
and are named in the record; a verdict against rows that assume other starting weights or
another schedule says "not comparable", naming both sides."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from harness.checking import check_record
from harness.cli import main
from harness.parity import build
from harness.records import Record
from harness.reference import reference_dir
from workloads.layers.test_pretrained import _mmdet_darknet_names

USAGE = 2


def _smoke_darknet_file(tmp_path: Path, harness_cache: Path) -> tuple[Path, int]:
    """The smoke YOLOv3's backbone, random values, under mmdet's Darknet names."""
    from workloads.yolov3 import YOLOv3Workload

    wl = YOLOv3Workload(YOLOv3Workload.presets()["smoke"])
    wl.datasets(None, harness_cache)  # the class set comes from the data
    torch.manual_seed(3)
    backbone = wl.build_model().backbone
    for p in backbone.parameters():
        p.data.normal_()
    state = _mmdet_darknet_names(backbone.state_dict())
    assert "conv_res_block1.conv.conv.weight" in state
    path = tmp_path / "darknet53_mmdet.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, path)
    return path, len(state)


def test_backbone_weights_in_the_originals_layout_are_loaded_and_recorded(
        harness_run, harness_cache: Path, tmp_path: Path) -> None:
    path, keys = _smoke_darknet_file(tmp_path, harness_cache)
    record = harness_run("yolov3", steps=1, warmup_steps=0, eval=False,
                         overrides=(f"backbone_weights={path}",))
    assert record.status == "ok", record.error
    (entry,) = record.start_weights
    assert entry["part"] == "backbone" and entry["layout"] == "mmdet-darknet53"
    assert entry["keys_loaded"] == keys and entry["path"] == str(path.resolve())
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.init() == "backbone"
    assert record.schedule and record.schedule["optimizer_steps"] == 1


def test_a_file_of_another_layout_exits_2_naming_the_keys(
        harness_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workloads.layers.resnet import ResNet

    path = tmp_path / "r18.pth"
    torch.save(ResNet(depth=18).state_dict(), path)
    code = main(["run", "yolov3", "--steps", "1", "--no-eval", "--out", str(tmp_path / "run"),
                 "--cache-dir", str(harness_cache), "--set", f"backbone_weights={path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == USAGE
    line = next(x for x in err if "backbone_weights does not fit" in x)
    assert "closest layout" in line and "missing: stem.0.weight" in line
    assert "unexpected: " in line


def test_whole_model_checkpoint_of_a_run_starts_another_run(harness_run, tmp_path: Path) -> None:
    first = harness_run("yolov3", steps=1, warmup_steps=0, eval=False)
    ckpt = Path(first.out_dir or tmp_path / "run0") / "checkpoint.pt"
    record = harness_run("yolov3", steps=1, warmup_steps=0, eval=False,
                         overrides=(f"init_checkpoint={ckpt}",))
    assert record.status == "ok", record.error
    assert [(e["part"], e["layout"]) for e in record.start_weights] == [("model", "harness")]
    assert record.init() == "checkpoint"


# ------------------------------------------------------------------ not comparable
def _smoke_record(table: str = "yolov3", **changes: object) -> Record:
    """A yolov3 smoke train record shaped like the preset's run that scored the row means."""
    from harness.config import config_to_dict
    from harness.reference import load_table
    from workloads.yolov3 import YOLOv3Workload

    preset = YOLOv3Workload.presets()["smoke"]
    rows = [r for r in load_table(reference_dir() / f"{table}.csv")
            if r.scale == "smoke" and r.kind == "train"]
    wcfg = config_to_dict(dataclasses.replace(preset, num_classes=4))
    record = Record(kind="train", workload="yolov3", scale="smoke", backend="cpu",
                    mode="eager", precision="fp32", status="ok",
                    config={"run": {"overrides": []}, "workload": wcfg},
                    metrics={r.metric: r.value for r in rows},
                    start_weights=[],
                    schedule={"optimizer_steps": preset.steps, "preset_steps": preset.steps,
                              "batch_size": preset.batch_size,
                              "preset_batch_size": preset.batch_size, "grad_accum": 1,
                              "world_size": 1})
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def test_the_preset_run_passes_and_a_shorter_one_is_not_comparable() -> None:
    ok = check_record(_smoke_record(), reference_dir())
    assert ok.passed, ok.summary
    short = _smoke_record()
    assert short.schedule is not None
    short.schedule = {**short.schedule, "optimizer_steps": 30}
    res = check_record(short, reference_dir())
    assert not res.passed and res.not_comparable
    assert "measured over 400 optimizer steps (the preset's), the run trained 30" in res.summary
    assert {v.status for v in res.verdicts} == {"not comparable"}
    assert check_record(short, reference_dir(), compare_anyway=True).passed


def test_other_starting_weights_are_not_comparable_naming_both() -> None:
    pretrained = _smoke_record(start_weights=[{"part": "backbone", "layout": "mmdet-darknet53"}])
    res = check_record(pretrained, reference_dir())
    assert res.not_comparable
    assert ("the row assumes random weights (init=random), the run started from a pretrained "
            "backbone") in res.summary


def test_a_smaller_batch_is_not_comparable() -> None:
    record = _smoke_record()
    assert record.schedule is not None
    record.schedule = {**record.schedule, "batch_size": 2}
    res = check_record(record, reference_dir())
    assert res.not_comparable and "batch of" in res.summary


def test_check_cli_says_not_comparable(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from harness.records import write_record

    record = _smoke_record()
    assert record.schedule is not None
    record.schedule = {**record.schedule, "optimizer_steps": 30}
    write_record(tmp_path / "record.json", record)
    assert main(["check", str(tmp_path / "record.json")]) == 1
    out = capsys.readouterr().out
    assert "result: NOT COMPARABLE (the row was measured over" in out
    assert "0 passed, 0 failed, 1 not comparable" in out


def test_parity_of_other_schedules_compares_speed_not_accuracy() -> None:
    base = _smoke_record()
    short = copy.deepcopy(base)
    assert short.schedule is not None
    short.schedule = {**short.schedule, "optimizer_steps": 30}
    short.metrics = {k: v / 2 for k, v in base.metrics.items()}
    table = build([base, short])
    metric_rows = [r for r in table.rows[table.run_rows:] if r[0] in base.metrics]
    assert metric_rows and all(r[-1] == "not comparable" for r in metric_rows)
    assert any("not comparable" in w and "optimizer steps" in w for w in table.warnings)
    assert not table.worse
    judged = build([base, short], compare_anyway=True)
    assert judged.worse  # half the accuracy: WORSE once the schedules are ignored


def test_check_of_a_no_eval_run_points_at_harness_eval() -> None:
    record = _smoke_record(metrics={})
    record.config["run"]["eval"] = False
    record.config["run"]["out"] = "runs/x"
    res = check_record(record, reference_dir())
    assert not res.passed
    assert res.summary == ("the run has no evaluation (--no-eval); score its weights with "
                           "`harness eval yolov3 --checkpoint runs/x/checkpoint.pt`")
