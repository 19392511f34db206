"""reference_results/README.md describes the tables that exist, and the rows a run can match
name metrics the workload emits."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from harness.plugins import workloads

REF = Path(__file__).resolve().parents[1] / "reference_results"
PERF = {"fps", "samples_per_s", "peak_memory_bytes"}


def test_readme_lists_every_table_and_only_tables_that_exist() -> None:
    text = (REF / "README.md").read_text()
    named = set(re.findall(r"`([\w.]+\.csv)`", text))
    on_disk = {p.name for p in REF.glob("*.csv")}
    assert on_disk <= named, f"tables the README does not describe: {sorted(on_disk - named)}"
    assert named <= on_disk, f"the README names tables that do not exist: {sorted(named - on_disk)}"


def test_readme_cites_no_path_outside_the_repository() -> None:
    text = (REF / "README.md").read_text()
    assert not re.findall(r"(?<![\w.])/(?:tmp|work|home|root|Users)/", text)


def test_rows_of_preset_scales_name_metrics_the_workload_emits() -> None:
    registered = workloads()
    for path in sorted(REF.glob("*.csv")):
        if path.stem not in registered:  # aliases.csv, gate_thresholds.csv
            continue
        workload = registered[path.stem]
        presets = set(workload.presets())
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["scale"] in presets]
        unknown = {(r["scale"], r["metric"]) for r in rows if r["metric"] not in PERF | set(workload.metrics)}
        assert not unknown, f"{path.name}: rows a run can match name metrics it never emits: {unknown}"
