"""Passes' behaviour that one-line mistakes (bench/mutants.py) broke with no test failing: what CLE, bias
correction, AdaRound, dynamic quantization, fp16 and prepare must leave alone or compute. Expected values come
from numpy, ONNX Runtime on the float model, the papers' formulas or the ONNX spec's defaults."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.data import open_dataset
from onnxq.passes.prepare import relative_error
from onnxq.passes.qdq import QDQConfig, name_nodes, plan_qdq
from onnxq.quantize.pipeline import QuantizeContext
from onnxq.runtime.cpu_int8 import u8s8_saturates

# float-preserving rewrites scale each weight in float64 and round it to float32 once: a few ulps (~1e-7
# relative) of movement; 1e-5 is the passes' own verify tolerance. A mistake moves outputs by 1e-2 or more.
TOL = 1e-5


def _model(nodes, inputs, outputs, inits, opset=13) -> onnx.ModelProto:
    vi = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(nodes, "g", [vi(n, s) for n, s in inputs], [vi(n, s) for n, s in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return name_nodes(onnx.shape_inference.infer_shapes(model))


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _spread(rng, shape, spread=100.0) -> np.ndarray:
    """A weight whose output channels' ranges differ by up to ``spread``x, which CLE would even out."""
    scale = np.geomspace(1.0, spread, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# --- CLE -------------------------------------------------------------------------------------------------------


def test_cle_leaves_a_pair_whose_weight_another_node_reads():
    """Rescaling conv1's weight would change conv3, which reads it too: the pair is skipped, outputs are kept."""
    from onnxq.passes.cle import CLEConfig, equalize

    rng = np.random.default_rng(51)
    inits = {"w1": _spread(rng, (8, 4, 1, 1)), "w2": rng.standard_normal((6, 8, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"), helper.make_node("Relu", ["c1"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2"),
             helper.make_node("Conv", ["x", "w1"], ["z"], name="conv3")]  # fmt: skip
    model = _model(nodes, [("x", ["N", 4, 5, 5])], [("y", ["N", 6, 5, 5]), ("z", ["N", 8, 5, 5])], inits)
    result = equalize(model, CLEConfig(high_bias_absorption=False))
    assert result.details["pairs_equalized"] == 0
    assert "shared with other nodes" in result.details["skip_reasons"]["conv1 -> conv2"]
    x = {"x": rng.standard_normal((2, 4, 5, 5)).astype(np.float32)}
    for a, b in zip(_run(model, x), _run(result.model, x), strict=True):
        assert relative_error(a, b) <= TOL


def test_cle_does_not_equalize_through_a_clip_with_a_non_zero_floor():
    """clip(x / s, -1) != clip(x, -1) / s: Clip(-1, inf) is not positively homogeneous."""
    from onnxq.passes.cle import CLEConfig, equalize

    rng = np.random.default_rng(52)
    inits = {"w1": _spread(rng, (8, 4, 1, 1)), "w2": rng.standard_normal((6, 8, 1, 1)).astype(np.float32),
             "lo": np.array(-1.0, np.float32)}  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Clip", ["c1", "lo"], ["a"], name="clip"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2")]  # fmt: skip
    model = _model(nodes, [("x", ["N", 4, 5, 5])], [("y", ["N", 6, 5, 5])], inits)
    result = equalize(model, CLEConfig(high_bias_absorption=False))
    assert result.details["pairs_equalized"] == 0
    assert "not positively homogeneous" in result.details["skip_reasons"]["conv1 -> conv2"]
    x = {"x": rng.standard_normal((2, 4, 5, 5)).astype(np.float32) * 5}
    assert relative_error(_run(model, x)[0], _run(result.model, x)[0]) <= TOL


def test_high_bias_absorption_into_a_gemm_with_beta_keeps_the_outputs_on_the_calibration_data():
    """fc1 computes 0.5 x W1' + 2 C1: moving c out of its pre-activation takes c / 2 out of C1."""
    from onnxq.passes.cle import CLEConfig, equalize

    rng = np.random.default_rng(53)
    inits = {"w1": (0.3 * rng.standard_normal((16, 10))).astype(np.float32), "b1": np.full(16, 10.0, np.float32),
             "w2": rng.standard_normal((3, 16)).astype(np.float32), "b2": np.zeros(3, np.float32)}  # fmt: skip
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["g1"], name="fc1", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["g1"], ["a"], name="relu"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2", transB=1)]  # fmt: skip
    model = _model(nodes, [("x", ["N", 10])], [("y", ["N", 3])], inits)
    x = rng.standard_normal((1500, 10)).astype(np.float32)  # > 1000 values per channel: a trusted minimum
    ctx = QuantizeContext(calib=open_dataset({"x": x}, model), batch_size=500)
    result = equalize(model, CLEConfig(absorption_source="data"), ctx)
    assert result.details["bias_absorbed_channels"] == 16  # every pre-activation stays near 20, far above 0
    assert relative_error(_run(model, {"x": x})[0], _run(result.model, {"x": x})[0]) <= TOL


# --- bias correction -------------------------------------------------------------------------------------------


def _gemm(alpha: float, beta: float, bias_name: str = "b", second: bool = False, seed: int = 54):
    rng = np.random.default_rng(seed)
    w = (0.01 * (rng.integers(-100, 100, (8, 12)) + 0.4)).astype(np.float32)  # a systematic rounding offset
    w.flat[0] = 1.27  # per-tensor int8 scale exactly 0.01
    inits = {"w": w, bias_name: rng.standard_normal(8).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w", bias_name], ["y"], name="fc", transB=1, alpha=alpha, beta=beta)]
    outputs = [("y", ["N", 8])]
    if second:  # a second Gemm reading the same bias
        nodes.append(helper.make_node("Gemm", ["x", "w2", bias_name], ["y2"], name="fc2", transB=1))
        inits["w2"] = rng.standard_normal((8, 12)).astype(np.float32)
        outputs.append(("y2", ["N", 8]))
    return _model(nodes, [("x", ["N", 12])], outputs, inits), inits


def _correct(model, x, qcfg):
    from onnxq.passes.bias_correction import BiasCorrectionConfig, correct_biases
    from onnxq.quantize.calibrate import collect_ranges

    plan = plan_qdq(model, qcfg)
    ctx = QuantizeContext(calib=open_dataset({"x": x}, model), batch_size=64)
    ranges = collect_ranges(model, ctx.calib, plan.tensors, "minmax", batch_size=64)
    return correct_biases(model, plan, qcfg, ranges, ctx, BiasCorrectionConfig(inputs="float"))


def test_gemm_bias_correction_divides_alpha_times_the_weight_error_by_beta():
    """Y = alpha x W' + beta C: the output mean moves by alpha (W_q - W) E[x], which C must absorb divided by beta."""
    model, inits = _gemm(alpha=0.5, beta=2.0)
    x = np.random.default_rng(55).uniform(0.5, 1.5, (256, 12)).astype(np.float32)
    result = _correct(model, x, QDQConfig(per_channel=False))
    w = inits["w"].astype(np.float64)
    w_q = np.clip(np.rint(inits["w"] / np.float32(0.01)), -127, 127) * np.float32(0.01)  # int8, scale 1.27 / 127
    eps = 0.5 * (w_q - w) @ x.astype(np.float64).mean(axis=0)
    want = inits["b"].astype(np.float64) - eps / 2.0
    got = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "b"))
    # the corrected bias is stored in float32 (an ulp of |b| ~ 1e-7) and the means are float32 partial sums
    # (~1e-6 relative of eps); a missing alpha or beta would double eps
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5 * np.abs(eps).max())


def test_a_bias_shared_by_two_layers_is_not_corrected():
    model, inits = _gemm(alpha=1.0, beta=1.0, bias_name="shared", second=True)
    x = np.random.default_rng(56).uniform(0.5, 1.5, (64, 12)).astype(np.float32)
    result = _correct(model, x, QDQConfig(per_channel=False))
    assert result.details["skip_reasons"] == {"fc": "its bias is shared with other nodes",
                                              "fc2": "its bias is shared with other nodes"}  # fmt: skip
    got = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "shared"))
    np.testing.assert_array_equal(got, inits["shared"])


def test_the_mean_through_leaky_relu_uses_onnxs_default_slope_of_0_01():
    """E[LeakyRelu(z)] = E[max(z, 0)] + 0.01 E[min(z, 0)], E[max(z, 0)] = mu Phi(mu/s) + s phi(mu/s)."""
    from onnxq.passes._normal_moments import ELEMENTWISE, normal_mean_of

    mu, sigma = np.array([-1.0, 0.0, 0.7, 3.0]), np.array([0.5, 1.0, 2.0, 1.5])
    phi = np.exp(-0.5 * (mu / sigma) ** 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.array([math.erf(t / math.sqrt(2)) for t in mu / sigma]))
    relu = mu * cdf + sigma * phi
    want = relu + 0.01 * (mu - relu)
    got = normal_mean_of(lambda z: ELEMENTWISE["LeakyRelu"](z, {}), mu, sigma)  # no alpha attribute
    np.testing.assert_allclose(got, want, atol=1e-6 * sigma.max())  # the grid's documented accuracy


# --- AdaRound ---------------------------------------------------------------------------------------------------


def test_adam_steps_follow_kingma_and_ba_with_bias_correction():
    """Without the bias correction the first step would be 0.1 / sqrt(0.001) ~ 3.2 times too large."""
    from onnxq.passes._adaround_opt import Adam

    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    p = np.array([1.0, -2.0])
    adam = Adam(p.shape, lr, p.dtype)
    m = v = np.zeros(2)
    want = p.copy()
    for t, g in enumerate((np.array([0.5, -4.0]), np.array([0.1, 3.0])), start=1):
        adam.step(p, g)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g  # Algorithm 1 of the paper
        # the paper's efficient form of the bias-corrected step (end of its section 2)
        want -= lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(p, want, rtol=1e-12)  # float64, the same operations: round-off only


def test_adaround_leaves_a_weight_read_by_two_quantized_layers():
    from onnxq.passes.adaround import AdaRoundConfig, find_layers

    w = np.random.default_rng(57).standard_normal((6, 6)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"), helper.make_node("MatMul", ["h", "w"], ["y"],
                                                                                            name="mm2")]  # fmt: skip
    model = _model(nodes, [("x", ["N", 6])], [("y", ["N", 6])], {"w": w})
    qcfg = QDQConfig()
    layers, skipped = find_layers(model, plan_qdq(model, qcfg), qcfg, AdaRoundConfig())
    assert layers == [] and set(skipped) == {"mm1", "mm2"}
    assert all("feeds 2 quantized nodes" in why for why in skipped.values())


# --- dynamic quantization and embeddings ------------------------------------------------------------------------


@pytest.mark.parametrize("weight_type", ["int8", "uint8"])
def test_dynamic_gemm_with_transb_and_a_bias_equals_the_integer_arithmetic_done_in_numpy(weight_type):
    from onnxq.passes.dynamic import DynamicConfig, quantize_dynamic

    if weight_type == "int8" and u8s8_saturates():
        pytest.skip("ORT's CPU kernels here saturate uint8 x int8 products (onnxq.runtime.cpu_int8)")

    rng = np.random.default_rng(58)
    w = rng.standard_normal((6, 16)).astype(np.float32)  # [N, K]: transB
    b = np.array([100.0, -50.0, 3.0, 0.0, 1.0, -7.0], np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)]
    model = _model(nodes, [("x", ["N", 16])], [("y", ["N", 6])], {"w": w, "b": b})
    q = quantize_dynamic(model, DynamicConfig(weight_type=weight_type)).model
    stored = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert stored["fc_W_quantized"].dtype == stored["fc_W_zero_point"].dtype == np.dtype(weight_type)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)  # DynamicQuantizeLinear: uint8 over the range with 0
    xs = np.float32((hi - lo) / 255)
    xz = np.clip(np.rint(-lo / xs), 0, 255)
    xq = np.clip(np.rint(x / xs) + xz, 0, 255)
    ws = np.abs(w.T).max(axis=0) / 127  # symmetric int8, one scale per output column of W' = w.T
    wq = np.clip(np.rint(w.T / ws), -127, 127)
    want = ((xq - xz) @ wq) * (xs * ws) + b
    np.testing.assert_allclose(_run(q, {"x": x})[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_dynamic_quantization_and_embedding_tables_leave_excluded_nodes_in_float():
    from onnxq.passes.dynamic import DynamicConfig, quantize_dynamic

    rng = np.random.default_rng(59)
    table = rng.standard_normal((300, 8)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="mm")]  # fmt: skip
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    cfg = DynamicConfig(embedding_min_elements=1000)
    both = quantize_dynamic(model, cfg)
    assert both.details["matmuls_quantized"] == 1 and both.details["embedding_tables"] == 1  # the test can tell
    kept = quantize_dynamic(model, cfg, lambda node: "excluded" if node.name in ("mm", "embed") else None)
    assert kept.details["matmuls_quantized"] == 0 and kept.details["embedding_tables"] == 0
    assert [n.op_type for n in kept.model.graph.node] == ["Gather", "MatMul"]
    by_type = quantize_dynamic(model, cfg, lambda node: "excluded" if node.op_type == "MatMul" else None)
    assert by_type.details["matmuls_quantized"] == 0


# --- fp16 -------------------------------------------------------------------------------------------------------


def test_fp16_clips_weights_to_the_float16_range_and_casts_to_float16():
    """1e6 has no float16 value (inf): it becomes 65504, float16's largest; an inner Cast to float32 must become a
    Cast to float16, or the float16 Add after it would receive float32."""
    from onnxq.passes.fp16 import convert_to_fp16

    w = np.array([1e6, -1e6, 0.5, 2.0], np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["xc"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xc", "w"], ["y"], name="mul")]  # fmt: skip
    model = _model(nodes, [("x", ["N", 4])], [("y", ["N", 4])], {"w": w})
    result = convert_to_fp16(model)
    half = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "w"))
    np.testing.assert_array_equal(half, np.array([65504, -65504, 0.5, 2.0], np.float16))
    assert result.details["values_clipped_to_fp16_range"] == 2
    x = np.array([[1e-3, 1e-3, 1.0, -3.0]], np.float32)
    got = _run(result.model, {"x": x})[0]
    np.testing.assert_allclose(got, x * half.astype(np.float32), rtol=1e-3)  # float16: ~5e-4 relative


# --- prepare and QDQ ---------------------------------------------------------------------------------------------


def test_only_a_clip_to_0_6_makes_a_hard_swish():
    """x * clip(x + 3, 0, 5) / 6 is not HardSwish (x * relu6(x + 3) / 6): it must stay spelled out."""
    from onnxq.passes.prepare import prepare_model

    inits = {"three": np.array(3.0, np.float32), "six": np.array(6.0, np.float32),
             "lo": np.array(0.0, np.float32), "hi": np.array(5.0, np.float32)}  # fmt: skip
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "lo", "hi"], ["c"]),
             helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]  # fmt: skip
    model = _model(nodes, [("x", ["N", 8])], [("y", ["N", 8])], inits, opset=14)
    result = prepare_model(model)
    assert result.details["hardswish_fused"] == 0
    x = {"x": np.linspace(-5, 5, 16, dtype=np.float32).reshape(2, 8)}
    assert relative_error(_run(model, x)[0], _run(result.model, x)[0]) <= TOL


def test_qdq_refuses_a_model_below_the_opset_its_types_need():
    """Per-channel QuantizeLinear (the axis attribute) arrived in opset 13."""
    from onnxq.errors import PassError
    from onnxq.passes.qdq import apply_qdq

    w = np.random.default_rng(60).standard_normal((2, 3, 1, 1)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"])], [("x", ["N", 3, 2, 2])], [("y", ["N", 2, 2, 2])],
                   {"w": w}, opset=12)  # fmt: skip
    cfg = QDQConfig(per_channel=True)
    plan = plan_qdq(model, cfg)
    with pytest.raises(PassError, match="needs opset 13, the model has 12"):
        apply_qdq(model, plan, dict.fromkeys(plan.tensors, (-1.0, 1.0)), cfg)
