"""A channel whose weights are all near zero keeps its bias: its weight scale is raised until s_x * s_w gives the
int32 bias room (the weights still round to about zero), instead of the bias saturating int32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe


def dead_channel_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w[2] = 1e-9  # a dead channel: its output is its bias
    b = np.array([0.1, -0.2, 1.5, 0.3], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_dead_channel_keeps_its_bias(tmp_path):
    src, out = tmp_path / "conv.onnx", tmp_path / "q.onnx"
    onnx.save(dead_channel_conv(), src)
    x = np.random.default_rng(1).uniform(0, 1, size=(16, 3, 8, 8)).astype(np.float32)
    summary = quantize(src, out, {"x": x}, QuantizeRecipe())
    qdq = next(e for e in summary.passes if e["pass"] == "qdq")
    assert qdq["bias_saturated_values"] == 0 and qdq["weight_scales_raised_for_int32_bias"] == 1
    assert not any("saturated" in w for w in summary.warnings)
    y = ort.InferenceSession(str(out)).run(None, {"x": x[:4]})[0]
    # without the raise, s_b = s_x * 1e-9 / 127 ~ 3e-14 and the bias 1.5 saturates at 2^31 * s_b ~ 7e-5
    np.testing.assert_allclose(y[:, 2], 1.5, atol=0.02)  # within the output's own 8-bit step
    ref = ort.InferenceSession(str(src)).run(None, {"x": x[:4]})[0]
    others = [0, 1, 3]
    sqnr = 10 * np.log10(np.sum(ref[:, others] ** 2) / np.sum((ref[:, others] - y[:, others]) ** 2))
    assert sqnr > 30  # the live channels are untouched by it
    scales = next(
        numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer if t.name.endswith("w_axis0_scale")
    )
    s_x = next(numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer if t.name == "x_scale")
    assert 1.5 / (float(s_x) * scales[2]) <= np.iinfo(np.int32).max / 2 + 1  # the bias has room, by the floor
    w = numpy_helper.to_array(dead_channel_conv().graph.initializer[0]).reshape(4, -1)
    np.testing.assert_allclose(scales[[0, 1, 3]], np.abs(w).max(axis=1)[[0, 1, 3]] / 127, rtol=1e-6)  # unchanged
