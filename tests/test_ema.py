"""Model EMA as a harness feature (issue 22 item 3): the average is what evaluations score,
is checkpointed and resumed bit-exactly, is named in the record, and `harness eval` of the
final checkpoint evaluates it."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.ema import RAMP_UPDATES, ModelEMA
from harness.safe_load import safe_torch_load
from tests.test_resume import KILL_AT, RUN, _record, plugins_here  # noqa: F401 - fixture


def test_the_average_follows_the_original_formula() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).to(torch.bfloat16)
    ema = ModelEMA(model, decay=0.999, ramp=RAMP_UPDATES)
    assert ema.model[0].weight.dtype == torch.float32  # kept in fp32 under bf16 weights
    start = ema.model[0].weight.clone()
    expected = start.clone()
    for n in range(1, 4):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].num_batches_tracked += 1
        ema.update(model)
        d = 0.999 * (1 - math.exp(-n / RAMP_UPDATES))
        expected = d * expected + (1 - d) * model[0].weight.float()
    assert torch.allclose(ema.model[0].weight, expected, atol=1e-6)
    assert int(ema.model[1].num_batches_tracked) == 3 and ema.updates == 3
    assert not any(p.requires_grad for p in ema.model.parameters())
    constant = ModelEMA(model, decay=0.999)  # BEVDepth's: no ramp (its counter starts late)
    assert constant.current_decay() == 0.999


def test_ema_is_evaluated_checkpointed_and_resumed(plugins_here: pytest.MonkeyPatch,  # noqa: F811
                                                   tmp_path: Path) -> None:
    run = [*RUN, "--set", "ema_decay=0.95"]
    whole, cut, plain = tmp_path / "whole", tmp_path / "cut", tmp_path / "plain"
    assert main([*run, "--out", str(whole)]) == 0
    assert main([*RUN, "--out", str(plain)]) == 0
    record = _record(whole)
    assert record["ema"] == {"decay": 0.95, "ramp_updates": None, "updates": 50,
                             "evaluated": True}
    assert "ema" not in _record(plain)
    final = safe_torch_load(whole / "checkpoint.pt")
    ema_w, raw_w = final["ema"]["weights"], final["model"]
    assert ema_w.keys() == raw_w.keys() and not all(torch.equal(ema_w[k], raw_w[k]) for k in raw_w)
    # Same raw training with and without EMA; the metrics are the average's.
    assert all(torch.equal(raw_w[k], safe_torch_load(plain / "checkpoint.pt")["model"][k])
               for k in raw_w)

    plugins_here.setenv(KILL_AT, "45")
    assert main([*run, "--out", str(cut)]) != 0
    plugins_here.delenv(KILL_AT)
    assert "ema" in safe_torch_load(cut / "checkpoints" / "step_40.pt")
    assert main(["run", "--resume", str(cut)]) == 0
    resumed = safe_torch_load(cut / "checkpoint.pt")["ema"]
    assert resumed["updates"] == 50
    assert all(torch.equal(resumed["weights"][k], ema_w[k]) for k in ema_w)
    assert _record(cut)["metrics"] == record["metrics"]

    assert main(["eval", "tiny_noisy", "--checkpoint", str(whole / "checkpoint.pt"),
                 "--out", str(tmp_path / "eval")]) == 0
    evaluated = _record(tmp_path / "eval")
    assert evaluated["checkpoint"]["weights"] == "ema"
    assert evaluated["metrics"] == record["metrics"]
