"""`onnxq run`: quantize, evaluate and benchmark in one command, with a report."""

from __future__ import annotations

import json

import jsonschema
import numpy as np

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.report.document import load_schema


def _run(out, *extra):
    """`onnxq run` on the MLP sample model with its calibration and test sets, writing ``out``."""
    base = [
        "run",
        str(SAMPLE_MODELS / "mlp_digits.onnx"),
        "--calib",
        str(SAMPLE_MODELS / "calib.npz"),
        "--data",
        str(SAMPLE_MODELS / "test.npz"),
        "-o",
        str(out),
    ]
    return main([*base, *extra])


def test_run_compares_float_and_quantized_and_writes_a_valid_report(tmp_path, capsys):
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    code = _run(out, "--runs", "20", "--warmup", "2", "--report", str(report), "--no-progress")
    text = capsys.readouterr().out
    assert code == 0
    assert "float vs quantized" in text and "mlp_digits.onnx" in text and "q.onnx" in text
    doc = json.loads(report.read_text())
    jsonschema.Draft202012Validator(load_schema()).validate(doc)
    float_eval, quant_eval = doc["eval"]
    assert float_eval["fidelity"] is None and quant_eval["fidelity"]["reference"].endswith("mlp_digits.onnx")
    # the report's accuracy is the one measured by running the model, checked here independently
    import onnxruntime as ort

    data = np.load(SAMPLE_MODELS / "test.npz")
    logits = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": data["input"]})[0]
    assert quant_eval["accuracy"]["top1"] == float((logits.argmax(1) == data["label"]).mean())
    assert [b["model"] for b in doc["bench"]] == ["mlp_digits", "q"]
    assert doc["quantize"]["nodes_quantized"] >= 3
    assert (
        doc["bench"][1]["speedup_vs_first"]
        == doc["bench"][0]["latency_ms"]["p50"] / doc["bench"][1]["latency_ms"]["p50"]
    )


def test_run_refuses_a_bad_report_suffix_before_doing_any_work(tmp_path, capsys):
    out = tmp_path / "q.onnx"
    code = _run(out, "--report", str(tmp_path / "r.pdf"))
    assert code == 2 and not out.exists()
    assert "error:" in capsys.readouterr().err


def test_comparison_warns_when_the_quantized_model_is_slower_than_float():
    from onnxq.cli.run import format_comparison, slower_than_float_warning

    def entry(p50, speedup):
        return {"ep": "cpu", "latency_ms": {"p50": p50, "p99": p50}, "speedup_vs_first": speedup,
                "size_bytes": 1024, "ep_nodes": {"CPUExecutionProvider": 3}, "warnings": []}  # fmt: skip

    evals = [{"model_path": m, "accuracy": {"top1": 0.9}, "fidelity": None} for m in ("f.onnx", "q.onnx")]
    slower = [entry(0.5, None), entry(0.6, 0.5 / 0.6)]
    (warning,) = slower_than_float_warning(slower)
    assert "slower than the float one on cpu (p50 0.600 vs 0.500 ms)" in warning
    assert f"warning: {warning}" in format_comparison(evals, slower)
    assert slower_than_float_warning([entry(0.5, None), entry(0.4, 1.25)]) == []
    assert slower_than_float_warning([entry(0.5, None)]) == []
