"""The harness side of the workload contracts: config from data, a workload's own training
batches, predictions files, and the record's kind / weights_dtype / model fields."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import RunConfig, user_set_fields
from harness.errors import DatasetError
from harness.runner import execute
from tests.contract_workload import DATA_CLASSES, score_file


@pytest.fixture(autouse=True)
def _contract_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import plugins

    monkeypatch.setenv("HARNESS_PLUGINS", "tests.tiny_workload,tests.contract_workload")
    plugins.get_plugin_manager.cache_clear()


def run_contract(tmp_path: Path, name: str = "run", **kw: object) -> dict:
    kw.setdefault("steps", 4)
    return execute(RunConfig(workload="tiny-contracts", out=tmp_path / name,
                             cache_dir=tmp_path / "cache", **kw))


def probe(tmp_path: Path, name: str = "run") -> dict:
    return json.loads((tmp_path / name / "contract_probe.json").read_text())


def test_user_set_holds_set_keys_and_direct_flags() -> None:
    run = RunConfig(workload="tiny", overrides=("lr=0.1", "model.depth=3"), batch_size=4,
                    num_workers=None)
    assert user_set_fields(run) == {"lr", "model", "batch_size"}
    assert user_set_fields(RunConfig(workload="tiny")) == frozenset()


def test_config_taken_from_the_data_is_recorded(tmp_path: Path) -> None:
    record = run_contract(tmp_path, batch_size=8)
    assert record["config"]["workload"]["classes"] == DATA_CLASSES  # the preset says 3
    assert record["data"] == {"source": str(tmp_path / "cache"),
                              "from_data": {"classes": str(tmp_path / "cache" / "meta.json")}}
    assert probe(tmp_path)["user_set"] == ["batch_size"]
    on_disk = json.loads((tmp_path / "run" / "record.json").read_text())
    assert on_disk["config"]["workload"]["classes"] == DATA_CLASSES


def test_explicit_values_are_kept_and_contradictions_are_errors(tmp_path: Path) -> None:
    record = run_contract(tmp_path, overrides=(f"classes={DATA_CLASSES}",))
    assert record["data"]["from_data"] == {} and probe(tmp_path)["user_set"] == ["classes"]
    with pytest.raises(DatasetError, match=r"meta.json: field 'classes'"):
        run_contract(tmp_path, name="bad", overrides=("classes=5",))


def test_workload_batch_sampler_drives_training(tmp_path: Path) -> None:
    # 512 samples at batch 64: 8 batches per epoch, in order; 12 steps cross into epoch 1.
    run_contract(tmp_path, steps=12, batch_size=64, eval=False)
    seen = probe(tmp_path)["seen"]
    assert len(seen) == 12
    assert [b[0] for b in seen] == [0, 64, 128, 192, 256, 320, 384, 448, 0, 64, 128, 192]
    assert probe(tmp_path)["epochs"] == [0, 1]


def test_predictions_file_is_recorded_relative_and_rescores(tmp_path: Path) -> None:
    record = run_contract(tmp_path, steps=20)
    pred = record["predictions"]
    assert pred == {"format": "tiny-results", "path": "predictions/tiny_results.json",
                    "split": "val", "ground_truth": "synthetic blobs, seed 2"}
    assert score_file(tmp_path / "run" / pred["path"]) == pytest.approx(
        record["metrics"]["accuracy"], abs=1e-12)


def test_no_predictions_writer_leaves_no_folder(tmp_path: Path) -> None:
    record = execute(RunConfig(workload="tiny", steps=2, out=tmp_path / "run"))
    assert record["predictions"] is None and not (tmp_path / "run" / "predictions").exists()


def test_record_kind_weights_dtype_and_model_size(tmp_path: Path) -> None:
    record = execute(RunConfig(workload="tiny", steps=3, out=tmp_path / "run"))
    assert record["kind"] == "train" and record["weights_dtype"] == "fp32"
    # nn.Linear(8, 3): 27 parameters; per sample 2*8*3 FLOPs forward + 2*8*3 for the
    # weight gradient (the input needs no gradient).
    assert record["model"]["params"] == 27
    assert record["model"]["train_flops_per_sample"] == pytest.approx(96.0)
    bf16 = execute(RunConfig(workload="tiny", steps=3, precision="bf16", out=tmp_path / "b"))
    assert bf16["weights_dtype"] == "fp32"  # autocast keeps fp32 weights


def test_flop_count_failure_is_reported_not_fatal(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.flop_counter as fc

    class Broken:
        def __init__(self, *a: object, **k: object) -> None:
            raise RuntimeError("no counter here")

    monkeypatch.setattr(fc, "FlopCounterMode", Broken)
    record = execute(RunConfig(workload="tiny", steps=3, out=tmp_path / "run"))
    assert record["status"] == "ok" and record["model"]["params"] == 27
    assert record["model"]["train_flops_per_sample"] is None
    assert "no counter here" in record["model"]["train_flops_note"]


def test_flop_count_leaves_the_training_trajectory_alone(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import flops

    counted = execute(RunConfig(workload="tiny", steps=6, log_interval=1, out=tmp_path / "a"))
    monkeypatch.setattr(flops, "count_training", lambda *a, **k: {"params": 0})
    monkeypatch.setattr("harness.training.count_training", lambda *a, **k: {"params": 0})
    plain = execute(RunConfig(workload="tiny", steps=6, log_interval=1, out=tmp_path / "b"))
    assert [r["loss"] for r in counted["losses"]] == [r["loss"] for r in plain["losses"]]
