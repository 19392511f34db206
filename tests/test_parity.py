"""Parity tables (metrics as rows; markdown/CSV/HTML page), verdicts, exit code, the figure,
and the HTML page rendered by headless Chromium. Records come from real tiny-workload runs."""
from __future__ import annotations

import json

import base64
import copy
import dataclasses
import csv
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import plugins
from harness.cli import main
from harness.config import RunConfig
from harness.directions import rule_direction
from harness.errors import UsageError
from harness.parity import build
from harness.records import read_record, write_json_atomic
from harness.runner import execute

pytest.importorskip("matplotlib")
CHROMIUM = Path("/usr/bin/chromium")


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
    _variant(root / "fp32", root / "worse", lambda r: r["metrics"].update(
        accuracy=r["metrics"]["accuracy"] - 0.2))
    yield [root / "fp32", root / "bf16", root / "worse"]
    if added:
        pm.unregister(mod)


def _variant(src: Path, dst: Path, change: Any) -> Path:
    rec = json.loads((src / "record.json").read_text())  # the raw file, edited
    change(rec)
    write_json_atomic(dst / "record.json", rec)
    return dst


def _rows(out: str) -> dict[str, list[str]]:
    """metric -> cells of the markdown table."""
    found = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("| metric"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            found.setdefault(cells[0], cells)
    return found


def test_metrics_are_rows_runs_are_columns_and_worse_exits_1(
        runs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    base, _, worse = map(str, runs)
    assert main(["parity", base, worse, "--reference-dir", str(runs[0].parent)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("## Parity: tiny (smoke), baseline fp32")
    assert "| metric | better | fp32 | worse | Δ worse | verdict worse |" in out
    rows = _rows(out)
    assert rows["accuracy"][1] == "higher" and rows["accuracy"][4:] == ["-0.2", "WORSE"]
    assert rows["error"][1] == "lower"
    for meta in ("backend", "steps", "seed", "timed steps", "status"):
        assert meta in rows
    assert rows["steps"][2:4] == ["20", "20"] and rows["seed"][2:4] == ["0", "0"]
    assert list(rows).index("status") < list(rows).index("accuracy")
    assert rows["fps"][4].endswith("%") and rows["peak_memory_MiB"][4].endswith("%")
    assert "a verdict is WORSE" in err
    assert main(["parity", base, worse, "--no-fail"]) == 0
    md = capsys.readouterr().out
    assert main(["parity", base, worse, "--format", "md", "--no-fail"]) == 0
    assert capsys.readouterr().out == md


def test_metrics_option_selects_and_orders(runs: list[Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parity", str(runs[0]), str(runs[1]), "--metrics", "error,accuracy"]) == 0
    rows = list(_rows(capsys.readouterr().out))
    assert rows[-2:] == ["error", "accuracy"] and "fps" not in rows
    assert main(["parity", str(runs[0]), "--metrics", "nope"]) == 2
    assert "--metrics: nope not in these records" in capsys.readouterr().err


def test_reference_row_supplies_the_tolerance(runs: list[Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny.csv").write_text(
        "scale,kind,config,backend,device,precision,weights_dtype,mode,world_size,metric,value,"
        "tolerance,tolerance_kind,direction,source\n"
        "smoke,train,,cpu,any-cpu,fp32,fp32,eager,1,accuracy,1.0,0.25,abs,higher,measured here\n")
    args = ["parity", str(runs[0]), str(runs[2]), "--reference-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert _rows(out)["accuracy"][4:] == ["-0.2", "ok"]  # inside the 0.25 band
    assert "Tolerances" not in out and "measured here" not in out  # the verdicts only
    assert main([*args, "--verbose"]) == 0
    verbose = capsys.readouterr().out
    assert verbose.startswith(out.rstrip("\n"))  # the same table, then the tolerances
    assert "### Tolerances" in verbose
    assert "reference tiny.csv:2 (abs 0.25; measured here)" in verbose


def test_every_workload_metric_has_a_direction() -> None:
    coco = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
            "ARl"]
    assert {m: rule_direction(m)[0] for m in coco} == dict.fromkeys(coco, "higher")
    for m in ("mATE", "mASE", "mAOE", "mAVE", "mAAE"):
        assert rule_direction(m)[0] == "lower"
    # The naming rules agree with every registered workload's own declaration.
    for name, cls in plugins.workloads().items():
        for metric, direction in cls.metrics.items():
            assert rule_direction(metric)[0] == direction, (name, metric)
    assert rule_direction("some_new_thing") == ("", "unknown")


def test_too_few_timed_steps_and_emulated_speed_are_not_judged(
        runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def short(r: dict[str, Any]) -> None:
        r["throughput"].update(timed_steps=4, step_times_s=r["throughput"]["step_times_s"][:4],
                               samples_per_s=r["throughput"]["samples_per_s"] / 3)

    few = _variant(runs[0], tmp_path / "few", short)
    emu = _variant(runs[0], tmp_path / "emu", lambda r: r.update(emulated=True, backend="npu"))
    assert main(["parity", str(runs[0]), str(few), str(emu)]) == 0
    out, err = capsys.readouterr()
    rows = _rows(out)
    assert rows["fps"][5:] == ["-66.7%", "n/a (too few timed steps)", "-", "n/a (emulated)"]
    assert rows["accuracy"][6] == "ok" and rows["accuracy"][8] == "ok"
    warning = "few: 4 timed steps (< 8); its speed and memory are not compared"
    assert (out + err).count(warning) == 1  # once: in the table printed, not again on stderr
    table = tmp_path / "p.csv"  # a CSV cannot carry it: on stderr, once
    assert main(["parity", str(runs[0]), str(few), "--format", "csv", "--out", str(table)]) == 0
    out, err = capsys.readouterr()
    assert err.count(warning) == 1 and warning not in table.read_text()


def test_mixed_workloads_or_scales_are_refused(runs: list[Path]) -> None:
    base = read_record(runs[0])
    other = dataclasses.replace(copy.deepcopy(base), scale="full")
    with pytest.raises(UsageError, match="one workload and scale; got tiny/full, tiny/smoke"):
        build([base, other])
    with pytest.raises(UsageError, match="one kind; got train and eval"):
        build([base, dataclasses.replace(base, kind="eval")])
    assert main(["parity"]) == 2


def test_two_implementations_side_by_side_with_a_metric_map(runs: list[Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    """`--across-workloads`: the same model under another workload name (an mmdet: config)
    whose metric has another name; `--metric-map` puts both values in one row, judged."""
    other = _variant(runs[0], tmp_path / "mm", lambda r: (
        r.update(workload="mmdet:/cfg/tiny_mm.py"),
        r.__setitem__("metrics", {"mm/acc": r["metrics"]["accuracy"] - 0.2}),
        r.__setitem__("metric_directions", {"mm/acc": "higher"}),
        r.__setitem__("primary_metric", "mm/acc")))
    assert main(["parity", str(runs[0]), str(other)]) == 2  # two workloads: refused
    assert "--across-workloads" in capsys.readouterr().err
    code = main(["parity", str(runs[0]), str(other), "--across-workloads",
                 "--metric-map", "mm/acc=accuracy"])
    out = capsys.readouterr().out
    assert code == 1  # 0.2 lower accuracy: WORSE, across the two names
    assert "Parity: tiny (smoke) vs mmdet:/cfg/tiny_mm.py (smoke)" in out
    row = _rows(out)["accuracy"]
    assert row[2] != "-" and row[3] != "-" and "WORSE" in row[-1]
    assert "mm/acc" not in out
    assert main(["parity", str(runs[0]), str(other), "--across-workloads",
                 "--metric-map", "mm/acc"]) == 2


def test_csv_and_html_page_with_embedded_figure(runs: list[Path], tmp_path: Path) -> None:
    args = ["parity", *map(str, runs), "--no-fail"]
    assert main([*args, "--format", "csv", "--out", str(tmp_path / "p.csv")]) == 0
    table = list(csv.reader((tmp_path / "p.csv").open()))
    assert table[0][:5] == ["metric", "better", "fp32", "bf16", "worse"]
    assert ["precision", "", "fp32 (weights fp32)", "bf16 (weights fp32)",
            "fp32 (weights fp32)"] == table[3][:5]
    png, page = tmp_path / "f.png", tmp_path / "p.html"
    assert main([*args, "--format", "html", "--out", str(page), "--figure", str(png)]) == 0
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    assert text.rstrip().endswith("</html>") and "<table>" in text and "Tolerances" in text
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert embedded and base64.b64decode(embedded.group(1)) == png.read_bytes()
    assert '<td class="WORSE">WORSE</td>' in text


def test_figure_colours_labels_accuracy_band_and_hatched_emulated_bars(
        runs: list[Path], tmp_path: Path) -> None:
    from harness.parity_figure import colours, draw

    emu = _variant(runs[0], tmp_path / "emulated-on-a-long-folder-name",
                   lambda r: r.update(emulated=True, backend="npu"))
    records = [read_record(p) for p in (runs[0], runs[2], emu)]
    p = build(records)
    assert p.labels == ["fp32", "worse", "npu-fp32"]  # long folder name -> backend-precision
    cols = colours(records)
    assert cols[0] == cols[1] != cols[2]  # one colour per backend
    fig = draw(p)
    ax_loss, ax_acc, ax_fps, ax_mem = fig.axes[:4]
    assert len(ax_loss.lines) == 3
    assert ax_acc.get_title() == "accuracy (primary metric)"
    band = [c for c in ax_acc.patches]  # the baseline ± tolerance span
    assert band and ax_acc.get_legend().get_texts()[0].get_text().startswith("baseline ±")
    bars = [b for b in ax_fps.patches]
    measured = records[2]["throughput"]["samples_per_s"]
    assert bars[2].get_height() == pytest.approx(measured) and bars[2].get_hatch() == "//"
    assert bars[0].get_hatch() is None
    assert [t.get_text() for t in ax_fps.get_xticklabels()] == p.labels


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium absent (Debian: apt-get "
                    "install -y chromium; not in .ci/run: it took 2m38s to install here)")
def test_html_page_renders_in_headless_chromium(runs: list[Path], tmp_path: Path) -> None:
    page, shot = tmp_path / "p.html", tmp_path / "shot.png"
    assert main(["parity", *map(str, runs), "--no-fail", "--format", "html", "--out", str(page),
                 "--figure", str(tmp_path / "f.png")]) == 0
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
                    f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=120, check=False)
    from PIL import Image

    assert shot.exists()
    with Image.open(shot) as img:
        assert img.size == (1200, 900)
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        non_white = sum(n for n, c in colours if c != (255, 255, 255))
    assert len(colours) > 50 and non_white > 0.05 * 1200 * 900  # text, table, figure drawn
