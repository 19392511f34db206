"""`harness export` (ONNX) and the onnxruntime inference backend, on the tiny workload."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from harness.config import RunConfig
from harness.errors import UsageError
from harness.evaluation import EvalConfig, run_eval
from harness.export import ExportError, export_for_checkpoint, export_onnx
from harness.runner import execute
from tests.conftest import ROOT, harness_cmd

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture()
def trained(tmp_path: Path) -> Path:
    execute(RunConfig(workload="tiny", steps=6, out=tmp_path / "run", log_interval=3))
    return tmp_path / "run"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_PLUGINS": "tests.tiny_workload", "PYTHONPATH": str(ROOT)}
    return subprocess.run(harness_cmd(*args), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_export_then_onnxruntime_eval_matches_pytorch(trained: Path, tmp_path: Path) -> None:
    import onnx

    info = export_for_checkpoint("tiny", trained / "checkpoint.pt", tmp_path / "tiny.onnx", 13)
    graph = onnx.load(str(tmp_path / "tiny.onnx"))
    assert graph.opset_import[0].version == 13
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"  # dynamic batch; features fixed
    assert info["inputs"][0]["shape"] == ["batch", 8]
    torch_rec = run_eval(EvalConfig(workload="tiny", checkpoint=trained / "checkpoint.pt",
                                    out=tmp_path / "torch", batch_size=100))
    # 256 samples in batches of 100: the last batch (56) exercises the dynamic batch axis.
    ort_rec = run_eval(EvalConfig(workload="tiny", checkpoint=trained / "checkpoint.pt",
                                  backend="onnxruntime", onnx=tmp_path / "tiny.onnx",
                                  out=tmp_path / "ort", batch_size=100))
    assert ort_rec["status"] == "ok" and ort_rec["kind"] == "eval"
    assert ort_rec["metrics"] == pytest.approx(torch_rec["metrics"], abs=1e-6)
    agree = ort_rec["raw_output_agreement"]
    assert agree["batches"] == 3 and agree["within_tol"] is True
    assert 0 <= agree["max_abs_diff"] < 1e-4
    assert agree["decoded"] == {"samples": 256, "differ": 0, "fraction_differ": 0.0,
                                "rtol": 1e-3, "atol": 1e-3}
    assert ort_rec["onnx"]["exported"] is False
    assert "CPUExecutionProvider" in ort_rec["env"]["ort_providers"]
    assert ort_rec["throughput"]["timed_batches"] == 1  # 3 batches, 2 warmup
    pytest.importorskip("pandas")
    proc = _cli("parity", str(tmp_path / "torch"), str(tmp_path / "ort"), "--no-fail")
    assert proc.returncode == 0, proc.stderr
    assert "| accuracy |" in proc.stdout  # metrics side by side
    assert "Raw-output agreement: onnxruntime (CPUExecutionProvider) vs pytorch" in proc.stdout
    assert "| ort | out | " in proc.stdout and "| yes | 0/256 (0.0%) |" in proc.stdout


def test_onnxruntime_eval_exports_itself_and_reports_a_differing_graph(
        trained: Path, tmp_path: Path) -> None:
    rec = run_eval(EvalConfig(workload="tiny", checkpoint=trained / "checkpoint.pt",
                              backend="onnxruntime", out=tmp_path / "self"))
    assert rec["onnx"]["exported"] is True and (tmp_path / "self" / "model.onnx").is_file()
    # A graph from other weights: the agreement must say so, output by output.
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    state["model"]["bias"] = state["model"]["bias"] + 0.5
    torch.save(state, tmp_path / "shifted.pt")
    export_for_checkpoint("tiny", tmp_path / "shifted.pt", tmp_path / "shifted.onnx", 17)
    rec = run_eval(EvalConfig(workload="tiny", checkpoint=trained / "checkpoint.pt",
                              backend="onnxruntime", onnx=tmp_path / "shifted.onnx",
                              out=tmp_path / "bad"))
    agree = rec["raw_output_agreement"]
    assert agree["within_tol"] is False
    assert agree["outputs"][0]["max_abs_diff"] == pytest.approx(0.5, abs=1e-5)
    assert agree["outputs"][0]["fraction_outside_tol"] == 1.0


torch.library.define("evalcli_test::opaque", "(Tensor x) -> Tensor")


@torch.library.impl("evalcli_test::opaque", "CompositeExplicitAutograd")
def _opaque(x: torch.Tensor) -> torch.Tensor:
    return x * 2


class _Opaque(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.evalcli_test.opaque(x)


def test_an_op_without_onnx_mapping_is_named(tmp_path: Path) -> None:
    class W:
        name = "opaque"

    with pytest.raises(ExportError, match=r"does not export to ONNX.*evalcli_test::opaque") as err:
        export_onnx(W(), _Opaque(), (torch.ones(2, 3),), torch.ones(2, 3), tmp_path / "o.onnx")  # type: ignore[arg-type]
    assert err.value.exit_code == 2


def test_onnxruntime_cannot_train_and_takes_fp32_only(tmp_path: Path) -> None:
    proc = _cli("run", "tiny", "--backend", "onnxruntime", "--steps", "2",
                "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert "backend onnxruntime is inference-only and cannot train" in proc.stderr
    assert not (tmp_path / "r" / "record.json").exists()
    with pytest.raises(UsageError, match="does not support precision 'bf16'"):
        run_eval(EvalConfig(workload="tiny", checkpoint=tmp_path / "x.pt", backend="onnxruntime",
                            precision="bf16"))


def test_export_cli(trained: Path, tmp_path: Path) -> None:
    proc = _cli("export", "tiny", "--checkpoint", str(trained / "checkpoint.pt"),
                "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "onnx.checker ok" in proc.stdout and (tmp_path / "m.onnx").is_file()
    proc = _cli("export", "tiny", "--checkpoint", str(trained / "checkpoint.pt"),
                "--format", "tflite")
    assert proc.returncode == 2 and "unknown export format 'tflite'" in proc.stderr
    # issue 24: an opset the exporter lacks and an unwritable --out, one line before tracing
    proc = _cli("export", "tiny", "--checkpoint", str(trained / "checkpoint.pt"),
                "--format", "onnx", "--opset", "999", "--out", str(tmp_path / "x.onnx"))
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "--opset 999: this torch exports" in lines[0]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = _cli("export", "tiny", "--checkpoint", str(trained / "checkpoint.pt"),
                "--format", "onnx", "--out", str(blocker / "m.onnx"))
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "cannot write there" in lines[0], lines


def test_yolov3_smoke_model_exports_with_a_dynamic_batch(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    from workloads.yolov3 import YOLOv3Workload

    workload = YOLOv3Workload(YOLOv3Workload.presets()["smoke"])
    torch.manual_seed(0)
    model = workload.build_model().eval()
    batch = {"images": torch.randint(0, 255, (2, 3, 160, 160), dtype=torch.uint8)}
    with torch.no_grad():
        outputs = workload.forward_for_eval(model, batch)
    args = (batch["images"].float() / 255.0,)
    info = export_onnx(workload, model, args, outputs, tmp_path / "y.onnx")
    assert info["outputs"] == ["out.0", "out.1", "out.2"]
    session = ort.InferenceSession(str(tmp_path / "y.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 160, 160)  # another batch size than the traced one
    with torch.no_grad():
        ref = model(x)
    got = session.run(None, {"input_0": x.numpy()})
    assert [g.shape for g in got] == [tuple(r.shape) for r in ref]
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-3, atol=1e-4)


def test_a_model_called_with_a_dict_is_refused_naming_the_argument() -> None:
    from harness.export import capture_forward

    class DictModel(torch.nn.Module):
        def forward(self, inputs: dict) -> torch.Tensor:
            return inputs["x"] * 2

    class W:
        name = "dicty"

        def predict(self, model: torch.nn.Module, batch: dict) -> list:
            return list(model({"x": batch["x"]}))

    with pytest.raises(ExportError, match=r"non-tensor arguments \(argument 0 is a dict\)"):
        capture_forward(W(), DictModel(), {"x": torch.ones(2, 3)}, torch.device("cpu"))  # type: ignore[arg-type]
