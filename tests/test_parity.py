"""Parity tables (markdown/CSV/HTML) and the PNG figure, from real tiny-workload records."""
from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import plugins
from harness.cli import main
from harness.config import RunConfig
from harness.errors import UsageError
from harness.records import read_record, write_json_atomic
from harness.runner import execute

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """fp32 baseline, bf16 run, and a copy of the baseline with accuracy dropped by 0.2."""
    import tests.tiny_workload as mod

    pm = plugins.get_plugin_manager()
    added = not (pm.is_registered(mod) or pm.has_plugin("tests.tiny_workload"))
    if added:
        pm.register(mod, name="tests.tiny_workload")
    root = tmp_path_factory.mktemp("parity")
    for name, precision in (("fp32", "fp32"), ("bf16", "bf16")):
        execute(RunConfig(workload="tiny", steps=20, precision=precision, out=root / name,
                          checkpoint=False, log_interval=5))
    worse = read_record(root / "fp32")
    worse["metrics"]["accuracy"] -= 0.2
    worse.pop("_path")
    write_json_atomic(root / "worse" / "record.json", worse)
    yield [root / "fp32", root / "bf16", root / "worse"]
    if added:
        pm.unregister(mod)


def test_markdown_table_has_deltas_and_verdicts(runs: list[Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parity", *map(str, runs), "--reference-dir", str(runs[0].parent)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Parity: tiny (smoke), baseline fp32")
    header = next(line for line in out.splitlines() if line.startswith("| run |"))
    for col in ("backend", "precision", "emulated", "accuracy Δ", "accuracy verdict", "fps",
                "peak_mem_MiB"):
        assert f"| {col} |" in header
    worse = next(line for line in out.splitlines() if line.startswith("| worse |"))
    assert "WORSE" in worse and "| -0.2 |" in worse
    assert "default: 2% of the baseline value" in out  # no reference row for tiny here


def test_reference_row_supplies_the_tolerance(runs: list[Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny.csv").write_text(
        "scale,kind,config,backend,device,precision,weights_dtype,mode,world_size,metric,value,"
        "tolerance,tolerance_kind,direction,source\n"
        "smoke,train,,cpu,any-cpu,fp32,fp32,eager,1,accuracy,1.0,0.25,abs,higher,measured here\n")
    assert main(["parity", *map(str, runs), "--reference-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "reference tiny.csv:2 (abs 0.25; measured here)" in out
    worse = next(line for line in out.splitlines() if line.startswith("| worse |"))
    assert "WORSE" not in worse.split("| fps |")[0]  # 0.2 drop is inside the 0.25 band


def test_csv_html_and_figure(runs: list[Path], tmp_path: Path) -> None:
    assert main(["parity", *map(str, runs), "--format", "csv", "--out", str(tmp_path / "p.csv"),
                 "--figure", str(tmp_path / "p.png")]) == 0
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table["run"]) == ["fp32", "bf16", "worse"]
    assert list(table["precision"]) == ["fp32", "bf16", "fp32"]
    assert main(["parity", *map(str, runs), "--format", "html", "--out",
                 str(tmp_path / "p.html")]) == 0
    html = (tmp_path / "p.html").read_text()
    assert html.count("<table") == 2 and "Tolerances" in html
    from PIL import Image

    png = tmp_path / "p.png"
    assert png.stat().st_size > 20_000  # three panels with curves, bars and labels
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 1500 and img.size[1] > 450


def test_loss_curves_are_drawn(runs: list[Path], tmp_path: Path) -> None:
    from harness.parity import figure

    records = [read_record(p) for p in runs]
    assert len(records[0]["losses"]) == 4  # 20 steps, log interval 5
    figure(records, tmp_path / "f.png")
    assert (tmp_path / "f.png").exists()


def test_mixed_workloads_or_scales_are_refused(runs: list[Path]) -> None:
    from harness.parity import parity_frames

    base = read_record(runs[0])
    other: dict[str, Any] = copy.deepcopy(base)
    other["scale"] = "full"
    with pytest.raises(UsageError, match="one workload and scale; got tiny/full, tiny/smoke"):
        parity_frames([base, other])
    assert main(["parity"]) == 2


def test_emulated_speed_is_not_judged(runs: list[Path]) -> None:
    from harness.parity import parity_frames

    base = read_record(runs[0])
    emu = copy.deepcopy(base)
    emu.update(emulated=True, backend="npu")
    table, _ = parity_frames([base, emu])
    row = table.iloc[1]
    assert row["fps verdict"] == "n/a" and row["peak_mem_MiB verdict"] == "n/a"
    assert row["accuracy verdict"] == "ok"
    assert io.StringIO(table.to_csv(index=False)).getvalue().count("\n") == 3
