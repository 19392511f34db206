"""Reference tables: loading, matching, tolerance rules, and `harness check [--update]`."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import plugins
from harness.checking import check_record, compare_value, match_record
from harness.cli import main
from harness.config import RunConfig
from harness.errors import UsageError
from harness.records import Record, SCHEMA, write_json_atomic
from harness.reference import COLUMNS, RefRow, load_table, workload_tables
from harness.runner import execute

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = workload_tables(REPO / "reference_results")
HEADER = ",".join(COLUMNS)


@pytest.fixture(scope="module")
def tiny_plugin() -> Iterator[None]:
    import tests.tiny_workload as mod

    pm = plugins.get_plugin_manager()
    added = not (pm.is_registered(mod) or pm.has_plugin("tests.tiny_workload"))
    if added:
        pm.register(mod, name="tests.tiny_workload")
    yield
    if added:
        pm.unregister(mod)


@pytest.fixture(scope="module")
def tiny_runs(tiny_plugin: None, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real tiny runs (seeds 0 and 1): the repeated runs --update derives tolerance from."""
    root = tmp_path_factory.mktemp("ref-runs")
    out = []
    for seed in (0, 1):
        execute(RunConfig(workload="tiny", steps=30, seed=seed, out=root / f"seed{seed}",
                          checkpoint=False, log_interval=1000))
        out.append(root / f"seed{seed}" / "record.json")
    return out


def _table(tmp_path: Path, body: str, name: str = "w.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "\n" + body)
    return path


def _record(**kw: Any) -> Record:
    rec = {"workload": "w", "scale": "full", "backend": "npu", "precision": "fp32",
           "mode": "eager", "world_size": 8, "status": "ok", "metrics": {"AP": 0.30},
           "throughput": {"samples_per_s": 44.0}, "memory": {}, "env": {}, "emulated": False}
    rec.update(kw)
    return Record.from_json({"schema": SCHEMA, **rec})


ROWS = """full,train,,cuda,V100,fp32,fp32,eager,8,AP,0.309,0.01,abs,higher,paper A
full,train,,npu,unstated,any,any,eager,8,AP,0.305,0.01,abs,higher,vendor B
full,train,,npu,unstated,any,any,eager,8,fps,45,0.1,rel,higher,vendor B
"""


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.name)
def test_published_tables_load_with_sources(path: Path) -> None:
    rows = load_table(path)
    assert rows and all(r.source for r in rows)
    # Smoke numbers exist only where this project measured them, with command and commit.
    smoke = [r for r in rows if r.scale == "smoke"]
    # (the command may carry an environment prefix: "measured: OMP_NUM_THREADS=1 harness run")
    assert all(r.source.startswith("measured: ") and "harness run " in r.source
               and " @ " in r.source for r in smoke)


def test_yolov3_ap_is_a_fraction() -> None:
    rows = [r for r in load_table(REPO / "reference_results/yolov3.csv")
            if r.scale == "full" and r.metric == "AP" and "input_size=416" in r.config]
    assert [r.value for r in rows] == [0.309] and "30.9" in rows[0].source


def test_malformed_csv_names_file_line_and_column(tmp_path: Path) -> None:
    bad_value = _table(tmp_path, ROWS + "full,train,,cuda,V100,fp32,fp32,eager,8,NDS,high,0.01,"
                                        "abs,higher,x\n")
    with pytest.raises(UsageError, match=r"w\.csv: line 5, column 'value'"):
        load_table(bad_value)
    bad_kind = _table(tmp_path, "full,train,,cuda,V100,fp32,fp32,eager,8,AP,0.3,0.01,pct,higher,x\n")
    with pytest.raises(UsageError, match="line 2, column 'tolerance_kind'"):
        load_table(bad_kind)
    (tmp_path / "h.csv").write_text("scale,backend,metric\nfull,cuda,AP\n")
    with pytest.raises(UsageError, match=r"h\.csv: line 1, column 'kind': missing"):
        load_table(tmp_path / "h.csv")
    dup = _table(tmp_path, ROWS + ROWS.splitlines()[0] + "\n")
    with pytest.raises(UsageError, match="line 5, column 'metric': duplicate of line 2"):
        load_table(dup)


def test_match_prefers_same_backend_and_says_why(tmp_path: Path) -> None:
    rows = load_table(_table(tmp_path, ROWS))
    npu = match_record(_record(), rows)
    assert npu is not None and {r.backend for r in npu.rows} == {"npu"}
    assert npu.reason == ("same backend, precision not stated by the source, "
                          "same world size, same mode")
    cuda = match_record(_record(backend="cuda", env={"device_name": "V100"}), rows)
    assert cuda is not None and cuda.reason == "exact match"
    hpu = match_record(_record(backend="hpu"), rows)
    assert hpu is not None and "other backend (row" in hpu.reason


def test_full_rows_never_match_a_smoke_record(tmp_path: Path) -> None:
    rows = [r for r in load_table(REPO / "reference_results/yolov3.csv") if r.scale != "smoke"]
    assert match_record(_record(workload="yolov3", scale="smoke", backend="cuda"), rows) is None
    # streampetr's published (full) rows alone: a smoke record finds no row.
    lines = (REPO / "reference_results/streampetr.csv").read_text().splitlines()
    (tmp_path / "streampetr.csv").write_text(
        "\n".join([lines[0]] + [ln for ln in lines[1:] if not ln.startswith("smoke,")]) + "\n")
    res = check_record(_record(workload="streampetr", scale="smoke"), tmp_path)
    assert not res.passed and "no matching row" in res.summary


def test_direction_and_tolerance_rules() -> None:
    hi = RefRow("full", "train", "", "cuda", "-", "fp32", "fp32", "eager", "8", "AP", 0.30, 0.01,
                "abs", "higher", "s")
    assert compare_value(0.291, hi) and compare_value(0.9, hi) and not compare_value(0.289, hi)
    lo = RefRow("full", "train", "", "cuda", "-", "fp32", "fp32", "eager", "8", "mATE", 0.60, 0.05,
                "rel", "lower", "s")
    assert compare_value(0.629, lo) and compare_value(0.1, lo) and not compare_value(0.631, lo)
    assert not compare_value(float("nan"), hi)


def test_check_failed_run_and_emulated_speed(tmp_path: Path) -> None:
    _table(tmp_path, ROWS)
    failed = check_record(_record(status="diverged", error="non-finite loss at step 3"), tmp_path)
    assert not failed.passed and "diverged" in failed.summary
    emulated = check_record(_record(emulated=True), tmp_path)
    assert emulated.passed  # AP compared; fps skipped, not failed
    assert {v.metric: v.status for v in emulated.verdicts} == {"AP": "pass", "fps": "skip"}
    _table(tmp_path, ROWS.splitlines()[2] + "\n")  # only an fps row left
    assert not check_record(_record(emulated=True), tmp_path).passed  # nothing compared


def test_check_update_then_pass_then_fail(tiny_runs: list[Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ref = tmp_path / "ref"
    assert main(["check", *map(str, tiny_runs), "--update", "--reference-dir", str(ref)]) == 0
    rows = load_table(ref / "tiny.csv")
    assert {r.metric for r in rows} == {"accuracy", "error"}
    acc = next(r for r in rows if r.metric == "accuracy")
    assert (acc.scale, acc.backend, acc.precision, acc.world_size) == ("smoke", "cpu", "fp32", "1")
    assert acc.source.startswith("measured: harness run tiny") and " @ " in acc.source
    assert "n=2 runs" in acc.source and acc.tolerance >= 0.01
    capsys.readouterr()
    assert main(["check", str(tiny_runs[0]), "--reference-dir", str(ref)]) == 0
    assert "exact match" in capsys.readouterr().out

    worse = json.loads(tiny_runs[0].read_text())
    worse["metrics"]["accuracy"] = acc.value - acc.tolerance - 0.05
    write_json_atomic(tmp_path / "worse" / "record.json", worse)
    assert main(["check", str(tmp_path / "worse"), "--reference-dir", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "failed: accuracy" in out and "FAIL" in out

    full = copy.deepcopy(worse)
    full["scale"] = "full"
    write_json_atomic(tmp_path / "full" / "record.json", full)
    assert main(["check", str(tmp_path / "full"), "--reference-dir", str(ref)]) == 1
    assert "no matching row" in capsys.readouterr().out
    assert main(["check", str(tiny_runs[0]), "--reference-dir", str(tmp_path / "none")]) == 1


def test_update_replaces_rows_of_the_same_key(tiny_runs: list[Path], tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    _table(ref, "full,train,,cuda,V100,fp32,fp32,eager,8,accuracy,0.9,0.01,abs,higher,paper\n",
           "tiny.csv")
    for _ in range(2):
        assert main(["check", str(tiny_runs[0]), "--update", "--reference-dir", str(ref)]) == 0
    rows = load_table(ref / "tiny.csv")
    assert [r.scale for r in rows].count("smoke") == 2 and rows[0].source == "paper"
    assert "single run" in rows[-1].source


def test_update_keeps_the_configuration_a_fitting_row_pins(tiny_runs: list[Path],
                                                           tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    _table(ref, "smoke,train,classes=3,cpu,x,fp32,fp32,eager,1,accuracy,0.9,0.5,abs,higher,old\n",
           "tiny.csv")
    assert main(["check", str(tiny_runs[0]), "--update", "--reference-dir", str(ref)]) == 0
    rows = load_table(ref / "tiny.csv")
    new = [r for r in rows if r.source.startswith("measured")]
    assert {r.config for r in new} == {"classes=3"} and {r.kind for r in new} == {"train"}
    assert {r.weights_dtype for r in new} == {"fp32"}
    # A run with an override no row states gets its own rows, keyed by that override.
    rec = json.loads(tiny_runs[0].read_text())
    rec["config"]["run"]["overrides"] = ["features=4"]
    rec["config"]["workload"]["features"] = 4
    write_json_atomic(tmp_path / "f4" / "record.json", rec)
    assert main(["check", str(tmp_path / "f4"), "--update", "--reference-dir", str(ref)]) == 0
    configs = {r.config for r in load_table(ref / "tiny.csv")}
    # New rows also state what the run started from (init=; harness/comparable.py).
    assert "features=4;init=random" in configs and "classes=3" in configs


def test_the_workload_gate_helper_judges_by_the_repository_rows() -> None:
    """workloads' gate tests call harness.pytest_plugin.assert_passes_reference_rows: a record
    at the smoke rows' values passes, one below a row's band fails naming the metric."""
    from harness.pytest_plugin import assert_passes_reference_rows, reference_floor

    ref = Path(__file__).resolve().parents[1] / "reference_results"
    rows = [r for r in load_table(ref / "yolov3.csv") if r.scale == "smoke"
            and r.kind == "train" and r.backend == "cpu"]
    record = Record.from_json({
        "schema": SCHEMA, "workload": "yolov3", "scale": "smoke", "backend": "cpu",
        "precision": "fp32", "mode": "eager", "status": "ok", "env": {"device_name": "x86_64"},
        "metrics": {r.metric: r.value for r in rows},
        "config": {"run": {"overrides": []}, "workload": {"num_classes": 4}}})
    assert_passes_reference_rows(record, "yolov3")
    with pytest.raises(AssertionError):
        assert_passes_reference_rows(record, "bevdepth")  # the row must be the named table's
    record.metrics["AP"] = reference_floor("yolov3", "AP") - 0.01
    with pytest.raises(AssertionError, match="AP"):
        assert_passes_reference_rows(record, "yolov3")
