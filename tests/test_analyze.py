"""``onnxq analyze``: the node where 8 bits break is named first, with numbers measured in ORT; the weight-alone
variant dequantizes exactly as onnx.reference does; the report renders and the CLI's errors are clean."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from test_mixed_precision import D, outlier_mlp

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.quantize.analyze import _weight_dqs, _with_weights, analyze_model
from onnxq.quantize.recipe import QuantizeRecipe


@pytest.fixture(scope="module")
def mlp_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("analyze")
    src = folder / "mlp.onnx"
    onnx.save(outlier_mlp(), src)
    rng = np.random.default_rng(1)
    calib, held_out = (rng.normal(size=(n, D)).astype(np.float32) for n in (64, 64))
    np.savez(folder / "calib.npz", x=calib)
    np.savez(folder / "held.npz", x=held_out)
    return analyze_model(src, {"x": calib}, QuantizeRecipe(), data=str(folder / "held.npz")), folder


def test_the_node_reading_the_broken_tensor_comes_first(mlp_report):
    report, _ = mlp_report
    rows = {r["node"]: r for r in report["nodes"]}
    assert set(rows) == {"fc1", "fc2"} and report["sqnr_db"] < 20
    assert rows["fc2"]["sqnr_db_when_left_float"] > report["sqnr_db"] + 15  # leaving it float is what pays
    assert rows["fc2"]["sqnr_db_activations_alone"] < rows["fc2"]["sqnr_db_weight_alone"]  # h's grid, not W2
    assert report["advice"][0].startswith("fc2 (Gemm): left float, the model goes from")
    h = next(t for t in report["tensors"] if t["tensor"] == "h")
    assert h["outlier_ratio"] > 10 and set(h["methods"]) == {"minmax", "percentile", "entropy", "mse"}
    assert h["methods"]["percentile"]["max"] <= h["methods"]["minmax"]["max"]
    assert report["measured_on"].startswith("32 samples of") and report["schema"] == "onnxq.analyze/1"  # --samples


def test_weight_alone_dequantizes_as_onnx_reference_does(tmp_path):
    from onnx.reference import ReferenceEvaluator

    from onnxq.quantize.driver import quantize

    src, out = SAMPLE_MODELS / "resnet_digits.onnx", tmp_path / "q.onnx"
    quantize(src, out, str(SAMPLE_MODELS / "calib.npz"), QuantizeRecipe())
    qmodel, float_model = onnx.load(out), onnx.load(src)
    conv = next(n for n in float_model.graph.node if n.op_type == "Conv")

    class Plan:
        weights = [(conv.name, 1)]

    weights = _weight_dqs(qmodel, float_model, Plan())
    (dq_out,) = weights
    dq = next(n for n in qmodel.graph.node if n.output[0] == dq_out)
    inits = {t.name: t for t in qmodel.graph.initializer}
    tiny = helper.make_model(helper.make_graph([dq], "dq", [], [helper.make_tensor_value_info(dq_out, 1, None)],
                                               [inits[i] for i in dq.input if i]),
                             opset_imports=[helper.make_opsetid("", 19)])  # fmt: skip
    expected = ReferenceEvaluator(tiny).run(None, {})[0]
    got = next(t for t in _with_weights(float_model, qmodel, weights).graph.initializer if t.name == conv.input[1])
    np.testing.assert_allclose(numpy_helper.to_array(got), expected, rtol=0, atol=1e-7)


def test_the_cli_writes_the_report_and_refuses_bad_input(mlp_report, tmp_path, capsys):
    _, folder = mlp_report
    args = ["analyze", str(folder / "mlp.onnx"), "--calib", str(folder / "calib.npz")]
    assert main([*args, "--report", str(tmp_path / "a.html")]) == 0
    text = capsys.readouterr().out
    assert "what matters most:" in text and "fc2" in text
    page = (tmp_path / "a.html").read_text()
    assert page.count("<svg") == 2 and "fc2 (Gemm): left float" in page
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nodes"]
    assert (
        main([*args, "--report", str(tmp_path / "a.md")]) == 0
        and "## Per quantized node" in (tmp_path / "a.md").read_text()
    )
    capsys.readouterr()
    for bad in (["--dynamic"], ["--report", str(tmp_path / "a.txt")]):
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("error: ") and err[1].startswith("hint: "), err
    assert main(["analyze", str(folder / "mlp.onnx")]) == 2  # --calib is required
    assert capsys.readouterr().err.startswith("error: ")
    session = ort.InferenceSession(str(folder / "mlp.onnx"))  # the input model was left as it was
    assert session.get_inputs()[0].name == "x"
