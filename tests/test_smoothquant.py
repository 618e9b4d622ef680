"""SmoothQuant keeps the float function and lowers the int8 error where activations have outlier channels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe

RNG = np.random.default_rng(0)
D = 32


def _norm_then_matmuls(residual: bool) -> onnx.ModelProto:
    """LayerNorm (with a few large-scale channels: the outliers) -> two MatMuls [-> + residual Add]."""
    gamma = np.ones(D, np.float32)
    gamma[[3, 17]] = 40.0  # outlier channels, as in real transformers' LayerNorm outputs
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["h", "w1"], ["a"], name="q"),
             helper.make_node("MatMul", ["h", "w2"], ["b"], name="k"),
             helper.make_node("Add", ["a", "b"], ["ab"], name="sum")]  # fmt: skip
    out = "ab"
    if residual:  # post-LN: the residual Add reads the norm's output too, so 1/s cannot fold into it
        nodes.append(helper.make_node("Add", ["ab", "h"], ["y"], name="residual"))
        out = "y"
    inits = [numpy_helper.from_array(gamma, "gamma"),
             numpy_helper.from_array(RNG.standard_normal(D).astype(np.float32) * 0.1, "beta"),
             numpy_helper.from_array(RNG.standard_normal((D, D)).astype(np.float32) * 0.2, "w1"),
             numpy_helper.from_array(RNG.standard_normal((D, D)).astype(np.float32) * 0.2, "w2")]  # fmt: skip
    graph = helper.make_graph(nodes, "sq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, D])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 6, D])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _sqnr(ref, got) -> float:
    return float(10 * np.log10(np.square(ref).sum() / np.square(ref - got).sum()))


@pytest.mark.parametrize("residual", [False, True], ids=["pre-ln-fold", "post-ln-mul"])
def test_smoothquant_keeps_the_float_function_and_lowers_the_int8_error(residual, tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_norm_then_matmuls(residual), src)
    x = RNG.standard_normal((64, 6, D)).astype(np.float32)
    held = RNG.standard_normal((32, 6, D)).astype(np.float32)
    ref = ort.InferenceSession(str(src)).run(None, {"x": held})[0]
    sqnr = {}
    for passes in ((), ("smoothquant",)):
        out = tmp_path / f"q{len(passes)}.onnx"
        summary = quantize(src, out, {"x": x}, QuantizeRecipe(passes=passes), verify=True)
        sqnr[passes] = _sqnr(ref, ort.InferenceSession(str(out)).run(None, {"x": held})[0])
    entry = next(e for e in summary.passes if e["pass"] == "smoothquant")
    assert entry["groups_smoothed"] == 1 and entry["verify_max_rel_error"]  # --verify ran, within 1e-4
    assert max(entry["verify_max_rel_error"].values()) < 1e-4
    ops = [n.op_type for n in onnx.load(tmp_path / "q1.onnx").graph.node]
    assert ("Mul" in ops) == residual  # post-LN gets a Mul; pre-LN folds 1/s into the norm
    assert sqnr[("smoothquant",)] > sqnr[()] + 3, sqnr  # measured here: about +8 dB


def test_smoothquant_without_outliers_does_not_make_the_model_worse(tmp_path):
    model = _norm_then_matmuls(False)
    for t in model.graph.initializer:
        if t.name == "gamma":
            t.CopyFrom(numpy_helper.from_array(np.ones(D, np.float32), "gamma"))  # no outlier channel to move
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    x = RNG.standard_normal((64, 6, D)).astype(np.float32)
    held = RNG.standard_normal((32, 6, D)).astype(np.float32)
    ref = ort.InferenceSession(str(src)).run(None, {"x": held})[0]
    sqnr = {}
    for passes in ((), ("smoothquant",)):
        quantize(src, tmp_path / "q.onnx", {"x": x}, QuantizeRecipe(passes=passes))
        sqnr[passes] = _sqnr(ref, ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"x": held})[0])
    # alpha is kept only where it lowers the sampled int8 error, so the held-out error cannot move much
    assert sqnr[("smoothquant",)] >= sqnr[()] - 0.5, sqnr
