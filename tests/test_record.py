"""The typed run record (harness/records.py): JSON round trip, schema-1 records, one clear
line for a file that is not a record, and the host reading attributes, not keys."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.records import SCHEMA, SCHEMA_V1, Record, read_record, write_record

ROOT = Path(__file__).resolve().parents[1]


def _minimal(**kw: object) -> dict[str, object]:
    return {"schema": SCHEMA, "kind": "train", "workload": "w", "scale": "smoke",
            "backend": "cpu", "mode": "eager", "precision": "fp32", "status": "ok", **kw}


def test_round_trip_keeps_every_field_and_unknown_keys(tmp_path: Path) -> None:
    rec = Record(kind="eval", workload="w", scale="smoke", backend="npu", mode="eager",
                 precision="bf16", seed=3, emulated=True, status="oom",
                 metrics={"AP": 0.5, "odd": float("nan")}, oom={"phase": "inference"},
                 data={"source": "synthetic:coco", "from_data": {}},
                 extra={"from_a_newer_writer": [1, 2]})
    write_record(tmp_path / "record.json", rec)
    raw = json.loads((tmp_path / "record.json").read_text())
    assert raw["metrics"]["odd"] == "nan"  # JSON has no NaN: kept as text
    assert raw["data_source"] == "synthetic:coco"  # for schema-1 readers
    assert raw["from_a_newer_writer"] == [1, 2] and "resumed_from" not in raw
    back = read_record(tmp_path)
    assert back.path == tmp_path / "record.json"
    assert (back.kind, back.backend, back.seed, back.emulated, back.status) == (
        "eval", "npu", 3, True, "oom")
    assert back.oom == {"phase": "inference"} and back.extra == {"from_a_newer_writer": [1, 2]}
    assert back.to_json() == raw


def test_schema_1_records_still_load(tmp_path: Path) -> None:
    old = _minimal(schema=SCHEMA_V1, data_source="/data/coco", config={"run": {"seed": 0}})
    del old["kind"]  # the oldest training records have no kind
    (tmp_path / "record.json").write_text(json.dumps(old))
    rec = read_record(tmp_path / "record.json")
    assert rec.kind == "train" and rec.data_source == "/data/coco"
    assert rec.run_config() == {"seed": 0} and rec.workload_config() == {}
    assert rec.metrics == {} and rec.losses == [] and rec.model["params"] is None


@pytest.mark.parametrize(("content", "says"), [
    (b"[1, 2]", "not a run record (a JSON list"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{", "not valid JSON"),
    (json.dumps({"schema": "other/1"}).encode(), "field 'schema' is 'other/1'"),
    (json.dumps(_minimal(status="great")).encode(), "field 'status' is 'great'"),
    (json.dumps(_minimal(world_size="8")).encode(), "field 'world_size' is '8', expected int"),
    (json.dumps(_minimal(emulated=1)).encode(), "field 'emulated' is 1, expected bool"),
    (json.dumps(_minimal(metrics=[])).encode(), "field 'metrics' is [], expected dict"),
    (json.dumps({k: v for k, v in _minimal().items() if k != "workload"}).encode(),
     "no field 'workload'"),
])
def test_a_bad_file_is_one_usage_line(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "record.json"
    path.write_bytes(content)
    with pytest.raises(UsageError) as info:
        read_record(path)
    assert says in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_bad_record_is_exit_2_for_every_reading_verb(tmp_path: Path) -> None:
    from harness.cli import main

    (tmp_path / "record.json").write_text("[]")
    for argv in (["check", str(tmp_path)], ["parity", str(tmp_path), str(tmp_path)],
                 ["gate", "--baseline", str(tmp_path), str(tmp_path)]):
        assert main(argv) == 2, argv


def test_the_host_reads_the_record_as_attributes() -> None:
    """`record[...]` only at the record's (de)serialisation: harness/records.py."""
    out = subprocess.run(["git", "grep", "-nE", r"\brecord\[", "--", "harness/*.py"],
                         cwd=ROOT, capture_output=True, text=True).stdout
    hits = [line for line in out.splitlines() if not line.startswith("harness/records.py:")]
    assert not hits, "\n".join(hits)
