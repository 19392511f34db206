"""`harness gate`: passes two same-code runs, fails a run slowed by real added compute.

Noise design for a shared 2-core host (other test sessions and engineers load it heavily):
- every run stalls 15 ms per step (the tiny workload's `sleep_s`, like waiting on a device),
  so CPU contention moves only the few-ms compute part of a step, not the median as a whole;
- the slowed run adds real matmul work (`extra_work=8`, +50% per step measured on an idle host (4 gave
  only +17% there),
  +2x or more under contention), far above the 5% threshold, with 70 timed steps a side;
- the same-code pair is judged with a generous 25% threshold from a thresholds CSV (which
  also exercises per-workload overrides), and both runs bracket the slowed one in time;
- torch uses one thread: OpenMP spin-waiting on an oversubscribed host distorts timings.
The slowed run's record then states the baseline's overrides: it stands for new, slower code
run with the same command (gate pools baselines only with candidates measured the same way).
"""
from __future__ import annotations

import json

import copy
import itertools
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from harness import plugins
from harness.cli import main
from harness.config import RunConfig
from harness.errors import UsageError
from harness.gate import Thresholds, gate, load_thresholds
from harness.records import SCHEMA, Record, read_record, write_json_atomic
from harness.runner import execute

pytest.importorskip("scipy")
STALL = "sleep_s=0.015"
_IDS = itertools.count()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    import tests.tiny_workload as mod

    pm = plugins.get_plugin_manager()
    added = not (pm.is_registered(mod) or pm.has_plugin("tests.tiny_workload"))
    if added:
        pm.register(mod, name="tests.tiny_workload")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gate")
    plan = (("base", (STALL,)), ("slow", (STALL, "extra_work=8")), ("same", (STALL,)))
    try:
        for name, overrides in plan:
            execute(RunConfig(workload="tiny", steps=80, warmup_steps=10, out=root / name,
                              overrides=overrides, checkpoint=False, eval=False,
                              log_interval=1000))
    finally:
        torch.set_num_threads(threads)
        if added:
            pm.unregister(mod)
    slow = json.loads((root / "slow" / "record.json").read_text())  # the raw file, edited
    slow["config"]["run"]["overrides"] = [STALL]
    write_json_atomic(root / "slow" / "record.json", slow)
    yield {name: root / name for name, _ in plan}


def test_same_code_passes(runs: dict[str, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    thresholds = tmp_path / "gate_thresholds.csv"
    thresholds.write_text("workload,step_time_rel,memory_rel,alpha,note\n"
                          "tiny,0.25,0.25,0.01,generous: same code on a shared host\n")
    code = main(["gate", "--baseline", str(runs["base"]), str(runs["same"]),
                 "--thresholds", str(thresholds)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "gate_thresholds.csv row 'tiny'" in out


def test_slowed_run_fails(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["gate", "--baseline", str(runs["base"]), "--baseline", str(runs["same"]),
                 str(runs["slow"])])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "REGRESSION: median +" in out
    assert "pooled 2 of 2 baseline run(s) with the same workload, scale, kind, data source, " \
           "batch size" in out
    res = gate([read_record(runs["slow"])], [read_record(runs[k]) for k in ("base", "same")])[0]
    assert res.baselines == 2  # pooled
    assert res.slowdown is not None and res.slowdown > 0.2
    assert res.p_value is not None and res.p_value < 1e-6


def test_baseline_folder_excludes_the_candidate(runs: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = runs["base"].parent
    assert main(["gate", "--baseline", str(root), str(runs["slow"])]) == 1  # base+same found
    assert "REGRESSION" in capsys.readouterr().out


def _fake(times: list[float], mem: int = 100 << 20, batch: int = 8, data: str = "synthetic",
          overrides: tuple[str, ...] = (), device: str = "cpu0", **kw: Any) -> Record:
    rec = {"workload": "w", "scale": "smoke", "backend": "cpu", "mode": "eager",
           "precision": "fp32", "world_size": 1, "status": "ok", "emulated": False,
           "throughput": {"step_times_s": times}, "schema": SCHEMA,
           "memory": {"device_peak_allocated_bytes": mem}, "data": {"source": data},
           "env": {"device_name": device},
           "config": {"run": {"overrides": list(overrides), "grad_accum": 1},
                      "workload": {"batch_size": batch}}}
    rec.update(kw)
    record = Record.from_json(rec)
    record.path = Path(f"/fake/{next(_IDS)}/record.json")
    return record


@pytest.mark.parametrize("change", [
    {"batch": 16}, {"data": "/data/coco"}, {"overrides": ("input_size=320",)},
    {"device": "cpu1"}, {"precision": "bf16"}, {"mode": "compile"}, {"backend": "npu"},
    {"weights_dtype": "bf16"}, {"scale": "full"}, {"world_size": 2}])
def test_baselines_pool_only_with_the_same_configuration(change: dict[str, Any]) -> None:
    base = [0.010 + 0.0001 * (i % 7) for i in range(60)]
    (r,) = gate([_fake(base)], [_fake(base, **change)])
    assert r.verdict == "no baseline" and r.failed and r.baselines == 0
    assert "pooled 0 of 1" in r.pooled and "left out: 1x other" in r.pooled


def test_memory_is_compared_with_the_matching_baseline() -> None:
    base = [0.010 + 0.0001 * (i % 7) for i in range(60)]
    # A bigger-batch baseline (12.6 GiB) must not hide the candidate's growth over its own.
    (r,) = gate([_fake(base, mem=130 << 20)],
                [_fake(base, mem=100 << 20), _fake(base, mem=int(12.6 * 2**30), batch=32)])
    assert r.baselines == 1 and r.base_mem == 100 << 20
    assert r.verdict == "REGRESSION" and r.mem_verdict.startswith("REGRESSION: +30.0%")
    assert "left out: 1x other batch size" in r.pooled


def test_thresholds_file_must_exist_and_thresholds_be_valid(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match="thresholds file .*missing.csv not found"):
        load_thresholds(tmp_path / "missing.csv", "w")
    rec = tmp_path / "r"
    write_json_atomic(rec / "record.json", {"schema": SCHEMA, "workload": "w", "scale": "smoke",
                                            "backend": "cpu", "precision": "fp32",
                                            "status": "ok"})
    assert main(["gate", "--baseline", str(rec), str(rec),
                 "--thresholds", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv not found" in capsys.readouterr().err
    for flag, value in (("--time-threshold", "-1"), ("--memory-threshold", "-0.5"),
                        ("--alpha", "0"), ("--time-threshold", "nan")):
        assert main(["gate", "--baseline", str(rec), str(rec), flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and flag in err


def test_rules_on_synthetic_samples() -> None:
    base = [0.010 + 0.0001 * (i % 7) for i in range(60)]
    small = [t * 1.03 for t in base]  # significant, but below the 5% effect size
    (r,) = gate([_fake(small)], [_fake(base)])
    assert r.verdict == "ok" and "significant but small" in r.time_verdict
    (r,) = gate([_fake(base, mem=130 << 20)], [_fake(base)])
    assert r.verdict == "REGRESSION" and r.mem_verdict.startswith("REGRESSION: +30.0%")
    (r,) = gate([_fake(base, precision="bf16")], [_fake(base)])
    assert r.verdict == "no baseline" and r.failed
    (r,) = gate([_fake(base[:5])], [_fake(base)])
    assert r.verdict == "too few steps" and r.failed
    (r,) = gate([_fake([t * 3 for t in base], emulated=True)], [_fake(base, emulated=True)])
    assert r.verdict == "ok" and r.time_verdict.startswith("skip (emulated")
    (r,) = gate([_fake(base, status="oom")], [_fake(base)])
    assert r.verdict == "failed run"
    bad_base = copy.deepcopy(_fake(base, status="failed"))
    (r,) = gate([_fake(base)], [bad_base])
    assert r.verdict == "no baseline"


def test_threshold_table_precedence(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("workload,step_time_rel,memory_rel,alpha,note\n*,0.07,,,\nw,0.2,0.3,0.01,x\n")
    assert load_thresholds(path, "w").step_time_rel == 0.2
    other = load_thresholds(path, "other")
    assert (other.step_time_rel, other.memory_rel, other.alpha) == (0.07, 0.10, 0.05)
    assert load_thresholds(None, "w") == Thresholds()
    (r,) = gate([_fake([0.012] * 20)], [_fake([0.010] * 20)], path, {"step_time_rel": 0.5})
    assert r.thresholds.step_time_rel == 0.5 and r.verdict == "ok"
