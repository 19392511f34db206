"""`harness run --resume DIR --set ...` (issue 24 item 2): a diverged run continues from its
last finite checkpoint with other optimizer/schedule fields (a lower learning rate); any
other field is refused in one line, and the record and `check`/`parity` say it is another
recipe."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from harness.cli import main

OK, FAILED, USAGE = 0, 1, 2


def _diverged_at_13(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny run that diverges at step 13, with checkpoints at steps 5 and 10."""
    assert main(["run", "tiny", "--steps", "20", "--set", "nan_at_step=13",
                 "--checkpoint-interval", "5", "--log-interval", "1", "--out", str(out)]) == FAILED
    capsys.readouterr()


def test_diverged_run_resumes_with_a_lower_lr_recorded_as_another_recipe(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 24 item 2: `--resume DIR --set lr=...` continues a diverged run from its last
    finite checkpoint; the record says what changed at which step, and the run is not
    comparable with one that kept its recipe."""
    from harness.comparable import row_differences, run_differences
    from harness.records import read_record

    out = tmp_path / "run"
    _diverged_at_13(out, capsys)
    # nan_at_step counts the process's loss calls: the resumed process is 10 calls short.
    assert main(["run", "--resume", str(out), "--set", "lr=0.01"]) == OK
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok"
    (resumed,) = record["resumed_from"]
    assert (resumed["step"], resumed["previous_status"]) == (10, "diverged")
    assert resumed["changed"] == {"lr": [0.1, 0.01]}
    assert [(row["step"], row["lr"]) for row in record["losses"]][9:12] == [
        (10, 0.1), (11, 0.01), (12, 0.01)]  # the optimizer took the new rate from step 11
    assert record["config"]["workload"]["lr"] == 0.01
    assert record["config"]["run"]["overrides"] == ["nan_at_step=13", "lr=0.01"]
    resumed_run = read_record(out)
    assert resumed_run.resumed_changes() == "lr 0.1 -> 0.01 at step 10"
    plain = dataclasses.replace(resumed_run, resumed_from=None)
    assert run_differences(plain, resumed_run) == [
        "resumed with its recipe vs lr 0.1 -> 0.01 at step 10"]
    assert row_differences({"steps": "20"}, resumed_run) == [(
        "the run was resumed with other optimizer/schedule settings (lr 0.1 -> 0.01 at step "
        "10), a recipe the row was not measured with")]
    assert row_differences({"steps": "20"}, plain) == []


@pytest.mark.parametrize("setting,says", [
    ("features=4", "--set features cannot change on resume (only optimizer and schedule "
                   "fields may"),
    ("lr=nan", "config lr=nan: must be finite"),
])
def test_resume_set_of_a_model_field_or_a_bad_value_is_one_line(
        setting: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _diverged_at_13(out, capsys)
    before = (out / "record.json").read_text()
    assert main(["run", "--resume", str(out), "--set", setting]) == USAGE
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], lines
    assert (out / "record.json").read_text() == before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_10.pt", "step_5.pt"]


def _adam_and(schedule: str, lr: float) -> tuple[torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias], "lr": lr * 2}],
                            lr=lr, weight_decay=0.01)
    if schedule == "lambda":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** (s // 3))
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 6], gamma=0.5)
    return opt, sched


@pytest.mark.parametrize("schedule", ["lambda", "multistep"])
def test_fresh_settings_replace_the_checkpoints_and_keep_its_moments(schedule: str) -> None:
    from harness.resume_changes import Fresh

    opt, sched = _adam_and(schedule, 1e-3)
    for _ in range(4):  # four steps at the old rate: the moments and the position to keep
        opt.zero_grad()
        sum(p.sum() for g in opt.param_groups for p in g["params"]).backward()
        opt.step()
        sched.step()  # type: ignore[attr-defined]
    saved = {"opt": opt.state_dict(), "sched": sched.state_dict()}  # type: ignore[attr-defined]
    new_opt, new_sched = _adam_and(schedule, 1e-4)
    new_opt.param_groups[0]["weight_decay"] = 0.05
    fresh = Fresh(new_opt, new_sched)
    new_opt.load_state_dict(saved["opt"])
    new_sched.load_state_dict(saved["sched"])  # type: ignore[attr-defined]
    fresh.reapply(new_opt, new_sched)
    # Step 4 of either schedule: one halving (lambda: 4 // 3 = 1; multistep: past 3).
    assert [g["lr"] for g in new_opt.param_groups] == pytest.approx([0.5e-4, 1e-4])
    assert [g["initial_lr"] for g in new_opt.param_groups] == pytest.approx([1e-4, 2e-4])
    assert new_opt.param_groups[0]["weight_decay"] == 0.05
    assert new_sched.last_epoch == 4  # type: ignore[attr-defined]
    moments = new_opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(moments, saved["opt"]["state"][0]["exp_avg"])
    new_sched.step()  # type: ignore[attr-defined]
    assert math.isclose(new_opt.param_groups[0]["lr"], 0.5e-4)  # step 5: still one halving


@pytest.mark.parametrize("interval,twice,says", [
    ("0", "", "interrupted by SIGTERM: stopped after step 8 with a checkpoint; continue with: "
              "harness run --resume {out}"),
    ("0", "1", "received signal SIGTERM; it cannot be resumed: it wrote no periodic checkpoint"),
    ("5", "1", "received signal SIGTERM; continue from step_5.pt (step 5) with: harness run "
               "--resume {out}"),
], ids=["finishes-the-step", "twice-no-checkpoint", "twice-a-checkpoint"])
def test_sigterm_says_whether_the_run_can_be_resumed(
        interval: str, twice: str, says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24 item 5: a smoke run stopped by SIGTERM left nothing to resume and its line
    did not say so. Now SIGTERM, like a first Ctrl-C, finishes the step with a checkpoint; a
    second one stops at once and the line says whether the run can be resumed."""
    from harness import plugins
    from tests.test_resume import KILL_AT, TWICE

    monkeypatch.setenv("HARNESS_PLUGINS", "tests.tiny_workload,tests.test_resume")
    plugins.get_plugin_manager.cache_clear()
    monkeypatch.setenv(KILL_AT, "7")  # tests/test_resume.py's hook: SIGTERM after step 7
    if twice:
        monkeypatch.setenv(TWICE, "1")
    out = tmp_path / "run"
    assert main(["run", "tiny_noisy", "--steps", "12", "--checkpoint-interval", interval,
                 "--no-eval", "--out", str(out)]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # The notice when the signal arrives, then one line for the ending.
    assert len(lines) == 2 and "SIGTERM: finishing step" in lines[0], lines
    assert says.format(out=out) in lines[1], lines
    plugins.get_plugin_manager.cache_clear()
