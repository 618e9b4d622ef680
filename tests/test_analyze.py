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


@pytest.mark.parametrize("symmetric", [True, False])
def test_weight_alone_dequantizes_as_onnx_reference_does(tmp_path, symmetric):
    from onnx.reference import ReferenceEvaluator

    from onnxq.quantize.driver import quantize

    src, out = SAMPLE_MODELS / "resnet_digits.onnx", tmp_path / "q.onnx"
    quantize(src, out, str(SAMPLE_MODELS / "calib.npz"), QuantizeRecipe(symmetric_weights=symmetric))
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


def _two_output_model() -> onnx.ModelProto:
    """The outlier MLP (output y, broken by 8 bits) beside a plain Gemm branch (output z, fine at 8 bits)."""
    model = outlier_mlp()
    rng = np.random.default_rng(5)
    model.graph.initializer.append(numpy_helper.from_array(rng.normal(size=(D, 4)).astype(np.float32), "wz"))
    model.graph.node.append(helper.make_node("MatMul", ["x", "wz"], ["z"], name="side"))
    model.graph.output.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 4]))
    return model


def test_the_score_is_the_worst_output_and_identical_outputs_have_no_sqnr(tmp_path):
    from onnxq.quantize.driver import quantize

    src = tmp_path / "two.onnx"
    onnx.save(_two_output_model(), src)
    rng = np.random.default_rng(1)
    calib, held = (rng.normal(size=(n, D)).astype(np.float32) for n in (64, 32))
    np.savez(tmp_path / "held.npz", x=held)
    report = analyze_model(src, {"x": calib}, QuantizeRecipe(), data=str(tmp_path / "held.npz"))
    quantize(src, tmp_path / "q.onnx", {"x": calib}, QuantizeRecipe())
    ref = ort.InferenceSession(str(src)).run(None, {"x": held})
    got = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"x": held})
    per_output = [10 * np.log10(np.sum(r.astype(np.float64) ** 2) / np.sum((r - g).astype(np.float64) ** 2))
                  for r, g in zip(ref, got, strict=True)]  # fmt: skip
    assert per_output[1] > per_output[0] + 10  # z is fine, y is not
    assert report["sqnr_db"] == pytest.approx(min(per_output), abs=0.01)
    rows = {r["node"]: r for r in report["nodes"]}
    # "side" alone quantized leaves y exactly float: the score is then z's, far above the full model's
    assert rows["side"]["sqnr_db_quantized_alone"] > per_output[0] + 10


def test_a_model_left_all_float_has_no_sqnr():
    from onnxq.quantize.analyze import sqnr_db as _sqnr
    from onnxq.quantize.analyze import worst_db as _worst

    x = np.linspace(-1, 1, 50)
    assert _sqnr(x, x.copy()) is None and _worst([None, None]) is None and _worst([None, 3.0, 1.0]) == 1.0


def test_weight_and_activations_alone_each_cost_less_than_both(tmp_path):
    report = analyze_model(SAMPLE_MODELS / "resnet_digits.onnx", str(SAMPLE_MODELS / "calib.npz"), QuantizeRecipe(),
                           data=str(SAMPLE_MODELS / "test.npz"), samples=16)  # fmt: skip
    rows = [r for r in report["nodes"] if r.get("sqnr_db_weight_alone") and r.get("sqnr_db_activations_alone")]
    assert len(rows) >= 4
    for r in rows:  # one half of the quantization alone is closer to float than both halves together
        assert r["sqnr_db_weight_alone"] >= r["sqnr_db_quantized_alone"] - 0.5, r
        assert r["sqnr_db_activations_alone"] >= r["sqnr_db_quantized_alone"] - 0.5, r
    assert max(r["sqnr_db_activations_alone"] - r["sqnr_db_quantized_alone"] for r in rows) > 1.0
    assert max(r["sqnr_db_weight_alone"] - r["sqnr_db_quantized_alone"] for r in rows) > 1.0


def test_the_outlier_ratio_reads_nchw_channels_on_axis_1():
    from onnxq.quantize.analyze import outlier_ratio

    x = np.ones((2, 4, 3, 5))
    x[:, 1] *= 10.0  # channel 1 reaches 10x the others
    assert outlier_ratio(x.ravel(), [x.shape]) == pytest.approx(10.0)
    t = np.ones((2, 7, 6))
    t[..., 2] = 6.0  # [B, T, hidden]: hidden channel 2
    assert outlier_ratio(t.ravel(), [t.shape]) == pytest.approx(6.0)
    assert outlier_ratio(np.ones(5), [(5,)]) is None


@pytest.mark.parametrize("gain", [1.0, 3.0])
def test_each_methods_error_is_that_of_its_range_with_saturation(mlp_report, tmp_path, gain):
    from onnxq.quantize.qtypes import compute_qparams, qtype

    _, folder = mlp_report
    held = np.load(folder / "held.npz")["x"][:32] * np.float32(gain)  # x3: well past the calibrated ranges
    np.savez(tmp_path / "held.npz", x=held)
    calib = {"x": np.load(folder / "calib.npz")["x"]}
    report = analyze_model(folder / "mlp.onnx", calib, QuantizeRecipe(), data=str(tmp_path / "held.npz"))
    h = next(t for t in report["tensors"] if t["tensor"] == "h")
    model = onnx.load(folder / "mlp.onnx")
    w1, b1 = (numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == n)) for n in ("w1", "b1"))
    x = (held.astype(np.float64) @ w1 + b1).ravel()  # h in float, as the analysis observed it
    for method, entry in h["methods"].items():
        qp = compute_qparams(entry["min"], entry["max"], qtype("uint8"), symmetric=False)
        s, z = float(qp.scale), float(qp.zero_point)
        fq = (np.clip(np.rint(x / s) + z, 0, 255) - z) * s
        want = 10 * np.log10(np.sum(x**2) / np.sum((x - fq) ** 2))
        assert entry["sqnr_db"] == pytest.approx(want, abs=0.05), method


def test_advice_names_only_what_passes_its_thresholds(mlp_report):
    report, _ = mlp_report
    full = report["sqnr_db"]
    for r in report["nodes"]:
        named = any(line.startswith(f"{r['node']} (") for line in report["advice"])
        gain = (r["sqnr_db_when_left_float"] or -1e9) - full
        assert named == (gain >= 1.0), (r["node"], gain)
    for t in report["tensors"]:
        methods = {m: v["sqnr_db"] for m, v in t["methods"].items() if v["sqnr_db"] is not None}
        named = any(line.startswith(f"tensor {t['tensor']}:") for line in report["advice"])
        assert named == (max(methods.values()) - methods["minmax"] >= 3.0), t["tensor"]
