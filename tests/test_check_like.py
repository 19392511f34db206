"""`harness check` compares like with like: configuration, kind, weights dtype, hardware."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.checking import check_record
from harness.cli import main
from harness.config import apply_overrides, config_to_dict
from harness.records import Record, SCHEMA, write_json_atomic
from harness.reference import load_aliases, load_table, parse_config

REPO = Path(__file__).resolve().parent.parent
REF = REPO / "reference_results"
HEADER = ("scale,kind,config,backend,device,precision,weights_dtype,mode,world_size,metric,"
          "value,tolerance,tolerance_kind,direction,source\n")


def _bevdepth_record(workload: str, overrides: list[str], metrics_from: str) -> Record:
    """A smoke record as the runner writes it: resolved workload config from the real presets,
    metrics equal to the named table's smoke rows (so it passes where it matches)."""
    bevdepth = pytest.importorskip("workloads.bevdepth")
    cls = {"bevdepth": bevdepth.BEVDepthWorkload, "matrixvt": bevdepth.MatrixVTWorkload}[workload]
    cfg = apply_overrides(cls.presets()["smoke"], overrides)
    rows = [r for r in load_table(REF / metrics_from) if r.scale == "smoke"]
    return Record.from_json({"schema": SCHEMA, "workload": workload, "scale": "smoke", "kind": "train",
            "backend": "cpu", "precision": "fp32", "mode": "eager", "world_size": 1,
            "status": "ok", "emulated": False, "metrics": {r.metric: r.value for r in rows},
            "env": {"device_name": "x86_64"}, "throughput": {}, "memory": {},
            "config": {"run": {"overrides": overrides}, "workload": config_to_dict(cfg)}})


def test_bevdepth_with_matrixvt_view_transform_matches_the_matrixvt_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _bevdepth_record("bevdepth", ["view_transform=matrixvt"], "matrixvt.csv")
    write_json_atomic(tmp_path / "run" / "record.json", rec)
    assert main(["check", str(tmp_path / "run"), "--reference-dir", str(REF)]) == 0
    out = capsys.readouterr().out
    assert "matched: matrixvt.csv lines 18-24" in out
    assert "bevdepth with view_transform=matrixvt is matrixvt (aliases.csv line 2)" in out

    # Without the alias the record finds no row and names the differing key, both values.
    ref = tmp_path / "ref"
    shutil.copytree(REF, ref)
    (ref / "aliases.csv").unlink()
    assert main(["check", str(tmp_path / "run"), "--reference-dir", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "no matching row" in out and "view_transform (row lss, record matrixvt)" in out


def test_matrixvt_at_its_defaults_and_bevdepth_at_its_own_match_their_tables() -> None:
    mvt = check_record(_bevdepth_record("matrixvt", [], "matrixvt.csv"), REF)
    assert mvt.passed and mvt.match is not None and "matrixvt.csv" in mvt.match.describe()
    lss = check_record(_bevdepth_record("bevdepth", [], "bevdepth.csv"), REF)
    assert lss.passed and lss.match is not None and "bevdepth.csv" in lss.match.describe()
    # matrixvt run with the lss view transform is bevdepth, by the reverse alias.
    back = check_record(_bevdepth_record("matrixvt", ["view_transform=lss"], "bevdepth.csv"), REF)
    assert back.passed and back.match is not None and "bevdepth.csv" in back.match.describe()


def test_an_override_no_row_states_is_a_mismatch_naming_it() -> None:
    rec = _bevdepth_record("bevdepth", ["depth_use_dcn=false", "num_workers=2"], "bevdepth.csv")
    res = check_record(rec, REF)
    assert not res.passed and res.match is None
    assert "depth_use_dcn (record sets false, row measured with the default)" in res.summary
    assert "num_workers" not in res.summary  # changes no number: not configuration


def test_aliases_hold_for_the_real_presets() -> None:
    """An alias holds in every preset, except in fields where the two presets differ on
    purpose (bevdepth full is 2-key, MatrixVT's full 1-key): each such field must be pinned
    in the `config` of every target row of that scale, so check never matches across it."""
    from harness import plugins

    aliases = load_aliases(REF)
    assert aliases
    for alias in aliases:
        src, dst = plugins.get_workload(alias.workload), plugins.get_workload(alias.same_as)
        overrides = [f"{k}={v}" for k, v in alias.config.items()]
        rows = load_table(REF / f"{alias.same_as}.csv")
        for scale, cfg in src.presets().items():
            mine, theirs = apply_overrides(cfg, overrides), dst.presets()[scale]
            differ = {f.name for f in dataclasses.fields(mine)
                      if getattr(mine, f.name) != getattr(theirs, f.name)}
            for row in (r for r in rows if r.scale == scale):
                pinned = set(parse_config(row.config))
                assert differ <= pinned, (alias, scale, differ - pinned)


def test_bevdepth_full_with_matrixvt_transform_does_not_match_1_key_rows() -> None:
    bevdepth = pytest.importorskip("workloads.bevdepth")
    cfg = apply_overrides(bevdepth.BEVDepthWorkload.presets()["full"], ["view_transform=matrixvt"])
    rec = _bevdepth_record("bevdepth", ["view_transform=matrixvt"], "matrixvt.csv")
    rec.scale = "full"
    rec.config["workload"] = config_to_dict(cfg)
    res = check_record(rec, REF)
    assert not res.passed and res.match is None
    assert "no matching row" in res.summary  # matrixvt's 1-key rows pin num_keys=1


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "w.csv").write_text(HEADER + body)
    return tmp_path


def _record(**kw: Any) -> Record:
    rec: dict[str, Any] = {
        "workload": "w", "scale": "full", "backend": "cuda", "precision": "bf16", "mode": "eager",
        "world_size": 1, "status": "ok", "metrics": {"AP": 0.30},
        "throughput": {"samples_per_s": 10.0}, "memory": {"device_peak_allocated_bytes": 9e9},
        "env": {"device_name": "NVIDIA H200"}, "emulated": False}
    rec.update(kw)
    return Record.from_json({"schema": SCHEMA, **rec})


def test_weights_dtype_is_never_matched_across(tmp_path: Path) -> None:
    ref = _write(tmp_path, "full,train,,cuda,H200,bf16,fp32,eager,1,AP,0.30,0.01,abs,higher,amp\n")
    autocast = check_record(_record(), ref)  # no weights_dtype field: fp32 weights
    assert autocast.passed
    deepspeed = check_record(_record(weights_dtype="bf16"), ref)
    assert not deepspeed.passed and deepspeed.match is None
    assert "fp32 weights" in deepspeed.summary and "bf16 weights" in deepspeed.summary


def test_eval_records_match_only_eval_rows(tmp_path: Path) -> None:
    ref = _write(tmp_path, "full,train,,cuda,H200,bf16,fp32,eager,1,AP,0.30,0.01,abs,higher,t\n")
    res = check_record(_record(kind="eval"), ref)
    assert not res.passed and "no eval rows" in res.summary
    _write(tmp_path, "full,eval,,cuda,H200,bf16,fp32,eager,1,AP,0.30,0.01,abs,higher,e\n")
    assert check_record(_record(kind="eval"), ref).passed
    assert not check_record(_record(), ref).passed  # and a training record not those


def test_speed_and_memory_judge_only_the_same_hardware(tmp_path: Path) -> None:
    body = ("full,train,,cuda,V100,bf16,fp32,eager,1,AP,0.30,0.01,abs,higher,paper\n"
            "full,train,,cuda,V100,bf16,fp32,eager,1,fps,100,0.1,rel,higher,paper\n"
            "full,train,,cuda,V100,bf16,fp32,eager,1,peak_memory_bytes,1e9,0.1,rel,lower,paper\n")
    ref = _write(tmp_path, body)
    other = check_record(_record(), ref)  # H200 record: 10 fps and 9 GB would both fail
    assert other.passed
    status = {v.metric: v.status for v in other.verdicts}
    assert status == {"AP": "pass", "fps": "info", "peak_memory_bytes": "info"}
    assert "other or unstated device (row V100, record NVIDIA H200)" in other.verdicts[1].note
    same = check_record(_record(env={"device_name": "Tesla V100-SXM2-32GB"}), ref)
    assert not same.passed and same.summary == "failed: fps, peak_memory_bytes"


def test_config_column_is_validated_and_canonical(tmp_path: Path) -> None:
    assert parse_config("image_size=(256, 704);flag=True;lr=1e-3") == {
        "image_size": "256,704", "flag": "true", "lr": "0.001"}
    _write(tmp_path, "full,train,image_size,cuda,V100,bf16,fp32,eager,1,AP,0.3,0.01,abs,higher,x\n")
    from harness.errors import UsageError

    with pytest.raises(UsageError, match=r"line 2, column 'config': 'image_size' is not key=value"):
        load_table(tmp_path / "w.csv")


def test_yolov3_smoke_rows_judge_only_the_synthetic_four_class_data() -> None:
    rows = [r for r in load_table(REF / "yolov3.csv") if r.scale == "smoke"]
    rec = Record.from_json({
           "schema": SCHEMA, "workload": "yolov3", "scale": "smoke", "backend": "cpu",
           "precision": "fp32", "mode": "eager", "world_size": 1, "status": "ok", "emulated": False,
           "env": {"device_name": "x86_64"}, "metrics": {r.metric: r.value for r in rows},
           "config": {"run": {"overrides": []}, "workload": {"num_classes": 4}}})
    assert check_record(rec, REF).passed
    rec.config["workload"]["num_classes"] = 80  # the same preset on real COCO
    res = check_record(rec, REF)
    assert not res.passed and "num_classes (row 4, record 80)" in res.summary
