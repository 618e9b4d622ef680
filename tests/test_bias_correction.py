"""Bias correction (passes/bias_correction.py): the weight-rounding shift of each output channel's mean is
measured (or derived from BatchNorm statistics) and removed from the float bias before QDQ insertion."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLE_MODELS, cpu_weight_type
from onnxq.data import open_dataset
from onnxq.errors import ConfigError
from onnxq.passes.bias_correction import (
    BiasCorrectionConfig,
    clipped_normal_mean,
    correct_biases,
    normal_mean_of,
)
from onnxq.passes.prepare import PrepareConfig, prepare_model
from onnxq.passes.qdq import QDQConfig, apply_qdq, name_nodes, plan_qdq, weight_qparams
from onnxq.quantize.calibrate import collect_ranges
from onnxq.quantize.driver import quantize
from onnxq.quantize.pipeline import QuantizeContext
from onnxq.quantize.qtypes import dequantize
from onnxq.quantize.qtypes import quantize as q_quantize
from onnxq.quantize.recipe import QuantizeRecipe

PER_TENSOR = QDQConfig(per_channel=False, weight_type=cpu_weight_type())  # what ORT computes exactly here

def recipe_options(options):
    """The pass's config as a recipe reads it (the one parser every pass's options go through)."""
    recipe = QuantizeRecipe.from_dict({"passes": ["bias-correction"], "bias_correction": options})
    return recipe.pass_options["bias-correction"]



# --- builders ----------------------------------------------------------------------------------


def _biased_weight(rng, shape, scale: float = 0.01, offset: float = 0.4) -> np.ndarray:
    """scale * (q + delta): integers q, a rounding offset of +-``offset`` shared by each output channel, and
    one element of 127 * scale so that per-tensor symmetric int8 gets exactly ``scale``. Rounding to
    nearest then moves every weight of channel o by -delta_o * scale: a known, systematic shift."""
    q = rng.integers(-100, 100, size=shape).astype(np.float64)
    delta = np.where(np.arange(shape[0]) % 2 == 0, offset, -offset).reshape((-1,) + (1,) * (len(shape) - 1))
    w = scale * (q + delta)
    w.flat[0] = 127 * scale
    return w.astype(np.float32)


def _model(nodes, inits, x_shape, y_rank, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * y_rank)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    model = onnx.shape_inference.infer_shapes(model)
    return name_nodes(model)


def gemm_layer(seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = {"w": _biased_weight(rng, (16, 32)), "b": rng.standard_normal(16).astype(np.float32)}
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)
    return _model([node], inits, ["N", 32], 2)


def conv_layer(seed=0) -> onnx.ModelProto:
    """A padded 3x3 Conv: its border outputs see fewer inputs, which the correction must account for."""
    rng = np.random.default_rng(seed)
    inits = {"w": _biased_weight(rng, (8, 4, 3, 3)), "b": rng.standard_normal(8).astype(np.float32)}
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])
    return _model([node], inits, ["N", 4, 6, 6], 4)


def _positive_inputs(shape, seed) -> np.ndarray:
    """Inputs with a clearly non-zero mean (0.5..1.5), as after a Relu: the weight error then shifts the
    output mean by about -delta * scale * fan_in."""
    return np.random.default_rng(seed).uniform(0.5, 1.5, size=shape).astype(np.float32)


def _ctx(model, x: np.ndarray) -> QuantizeContext:
    ctx = QuantizeContext(calib=open_dataset({"x": x}, model))
    ctx.batch_size = 64
    return ctx


def _quantized(model, calib_x, cfg=None, *, qcfg=PER_TENSOR, ctx=None):
    """(QDQ model without, QDQ model with bias correction, details)."""
    plan = plan_qdq(model, qcfg)
    ctx = ctx or _ctx(model, calib_x)
    ranges = collect_ranges(model, ctx.calib, plan.tensors, "minmax", batch_size=ctx.batch_size)
    plain = apply_qdq(model, plan, ranges, qcfg).model
    result = correct_biases(model, plan, qcfg, ranges, ctx, cfg or BiasCorrectionConfig())
    return plain, apply_qdq(result.model, plan, ranges, qcfg).model, result.details


def _run(model, x) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]


def _channel_mean_error(model, reference, x) -> np.ndarray:
    """Per output channel: mean over samples (and positions) of quantized - float output."""
    err = _run(model, x).astype(np.float64) - _run(reference, x)
    return np.moveaxis(err, 1, 0).reshape(err.shape[1], -1).mean(axis=1)


# --- empirical ---------------------------------------------------------------------------------


@pytest.mark.parametrize("build, x_shape", [(gemm_layer, (512, 32)), (conv_layer, (256, 4, 6, 6))])
@pytest.mark.parametrize("inputs", ["sequential", "float"])
def test_bias_correction_removes_most_of_the_weight_rounding_mean_shift(build, x_shape, inputs):
    model = build()
    calib, held_out = _positive_inputs(x_shape, 1), _positive_inputs(x_shape, 2)
    plain, corrected, details = _quantized(model, calib, BiasCorrectionConfig(inputs=inputs))
    before = np.abs(_channel_mean_error(plain, model, held_out))
    after = np.abs(_channel_mean_error(corrected, model, held_out))
    assert details["layers_corrected"] == 1 and details["channels_corrected"] == before.size
    # the shift is about 0.4 * 0.01 * fan_in (~0.1) per channel, far above the mean of the activation
    # rounding noise; on held-out data at least 90% of it must go in every channel
    assert before.min() > 0.05
    assert (after <= 0.1 * before).all(), (before, after)


def test_conv_correction_is_the_mean_of_the_weight_error_conv_padding_included():
    """Float inputs: the correction must be exactly mean(conv(x, W_q - W)) per channel (by linearity),
    border positions included; checked against a plain Conv with weight W_q - W run on the same data."""
    model = conv_layer()
    x = _positive_inputs((64, 4, 6, 6), 3)
    plan = plan_qdq(model, PER_TENSOR)
    ctx = _ctx(model, x)
    ranges = collect_ranges(model, ctx.calib, plan.tensors, "minmax")
    result = correct_biases(model, plan, PER_TENSOR, ranges, ctx, BiasCorrectionConfig(inputs="float"))
    w = numpy_helper.to_array(model.graph.initializer[0])
    qp = weight_qparams(w, model.graph.node[0], 1, PER_TENSOR)
    error_model = onnx.ModelProto()
    error_model.CopyFrom(model)
    error_model.graph.initializer[0].CopyFrom(numpy_helper.from_array(dequantize(q_quantize(w, qp), qp) - w, "w"))
    error_model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros(8, np.float32), "b"))
    expected = _run(error_model, x).astype(np.float64).mean(axis=(0, 2, 3))
    new_b = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "b"))
    old_b = numpy_helper.to_array(model.graph.initializer[1])
    # float32 storage of the bias (|b| ~ 1): 1e-6 absolute
    np.testing.assert_allclose(old_b - new_b, expected, atol=1e-6)
    # a correction that ignored the padding (all positions alike) would be off by far more than that
    interior = _run(error_model, x).astype(np.float64)[:, :, 1:-1, 1:-1].mean(axis=(0, 2, 3))
    assert np.abs(interior - expected).max() > 1e-3


def test_weight_overrides_are_the_weights_corrected_for():
    """With AdaRound-style integer overrides, W_q is what the overrides dequantize to."""
    model = gemm_layer()
    x0 = _positive_inputs((1, 32), 4)
    x = np.repeat(x0, 8, axis=0)  # every sample alike: E[x] = x0 exactly
    plan = plan_qdq(model, PER_TENSOR)
    ctx = _ctx(model, x)
    ranges = collect_ranges(model, ctx.calib, plan.tensors, "minmax")
    w = numpy_helper.to_array(model.graph.initializer[0])
    qp = weight_qparams(w, model.graph.node[0], 1, PER_TENSOR)
    floor_q = np.clip(np.floor(w / qp.scale), -128, 127).astype(np.int8)  # not round-to-nearest
    result = correct_biases(
        model, plan, PER_TENSOR, ranges, ctx, BiasCorrectionConfig(inputs="float"), weight_overrides={"w": floor_q}
    )
    dw = dequantize(floor_q, qp).astype(np.float64) - w
    expected = x0[0].astype(np.float64) @ dw.T
    new_b = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "b"))
    np.testing.assert_allclose(numpy_helper.to_array(model.graph.initializer[1]) - new_b, expected, atol=1e-6)


def test_sequential_inputs_come_from_the_partly_quantized_corrected_model():
    """Two Gemms: the second layer's correction must use its input as the QDQ model computes it, with the
    first layer already corrected (after 2 rounds a depth-2 layer is exact)."""
    rng = np.random.default_rng(6)
    inits = {
        "w1": _biased_weight(rng, (24, 32)),
        "b1": np.full(24, 0.5, np.float32),
        "w2": _biased_weight(rng, (10, 24)),
        "b2": rng.standard_normal(10).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    model = _model(nodes, inits, ["N", 32], 2)
    x = _positive_inputs((256, 32), 7)
    plan = plan_qdq(model, PER_TENSOR)
    ctx = _ctx(model, x)
    ranges = collect_ranges(model, ctx.calib, plan.tensors, "minmax", batch_size=64)
    result = correct_biases(model, plan, PER_TENSOR, ranges, ctx, BiasCorrectionConfig(rounds=2, tolerance=0.0))
    assert result.details["rounds"] == 2
    # what fc2 reads in the QDQ model built from the corrected model
    qmodel = apply_qdq(result.model, plan, ranges, PER_TENSOR).model
    fc2_input = next(n for n in qmodel.graph.node if n.name == "fc2").input[0]
    qmodel.graph.output.append(helper.make_tensor_value_info(fc2_input, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(qmodel.SerializeToString(), providers=["CPUExecutionProvider"])
    mean_in = sess.run([fc2_input], {"x": x})[0].astype(np.float64).mean(axis=0)
    w2 = inits["w2"]
    qp = weight_qparams(w2, nodes[2], 1, PER_TENSOR)
    expected = mean_in @ (dequantize(q_quantize(w2, qp), qp).astype(np.float64) - w2).T
    new_b2 = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "b2"))
    # the round-2 input means are those of the round-1 corrections, which differ from the final ones by
    # the second-order change (last_round_change); 1e-4 absolute covers it on a ~0.1 correction
    np.testing.assert_allclose(inits["b2"] - new_b2, expected, atol=1e-4)


def test_matmul_bias_add_is_corrected():
    """MatMul has no bias input; the per-channel constant Add after it is its bias (transformer exports)."""
    rng = np.random.default_rng(8)
    # [K, N]: one rounding offset per output column
    inits = {"w": _biased_weight(rng, (12, 32)).T.copy(), "c": rng.standard_normal(12).astype(np.float32)}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
        helper.make_node("Add", ["m", "c"], ["y"], name="bias"),
    ]
    model = _model(nodes, inits, ["N", 5, 32], 3)
    calib, held_out = _positive_inputs((128, 5, 32), 9), _positive_inputs((128, 5, 32), 10)
    plain, corrected, details = _quantized(model, calib)
    assert details["layers_corrected"] == 1
    before = np.abs((_run(plain, held_out).astype(np.float64) - _run(model, held_out)).mean(axis=(0, 1)))
    after = np.abs((_run(corrected, held_out).astype(np.float64) - _run(model, held_out)).mean(axis=(0, 1)))
    assert before.min() > 0.05 and (after <= 0.1 * before).all()


def test_layers_without_a_bias_are_skipped_with_a_reason():
    model = gemm_layer()
    del model.graph.node[0].input[2]
    x = _positive_inputs((64, 32), 1)
    _, _, details = _quantized(model, x)
    assert details["layers_corrected"] == 0
    assert "no bias" in details["skip_reasons"]["fc"]


# --- analytical (data-free) --------------------------------------------------------------------


def _bn_relu_conv(seed=0) -> onnx.ModelProto:
    """x ~ N(0, 1) -> Conv 1x1 identity -> BatchNorm(mean 0, var 1) -> Relu -> Conv 1x1 (biased weights).
    The BN output is exactly N(beta, gamma^2) per channel, so the BN statistics tell the true E[relu]."""
    rng = np.random.default_rng(seed)
    c = 8
    inits = {
        "w1": np.eye(c, dtype=np.float32).reshape(c, c, 1, 1),
        "gamma": rng.uniform(0.5, 2.0, c).astype(np.float32),
        "beta": rng.uniform(-1.0, 1.5, c).astype(np.float32),
        "mean": np.zeros(c, np.float32),
        "var": np.full(c, 1.0 - 1e-5, np.float32),  # var + eps = 1
        "w2": _biased_weight(rng, (6, c, 1, 1), scale=0.02),
        "b2": rng.standard_normal(6).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["z"], name="bn"),
        helper.make_node("Relu", ["z"], ["a"], name="relu"),
        helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="conv2"),
    ]
    return _model(nodes, inits, ["N", c, 4, 4], 4)


def test_data_free_bias_correction_works_without_data():
    float_model = _bn_relu_conv()
    ctx = QuantizeContext()  # no calibration data at all
    model = name_nodes(prepare_model(float_model, PrepareConfig(), ctx).model)
    assert "conv1" in ctx.bn_stats
    x = np.random.default_rng(11).standard_normal((512, 8, 4, 4)).astype(np.float32)
    plan = plan_qdq(model, PER_TENSOR)
    # activation ranges from a few samples (data-free bias correction needs none; QDQ still needs ranges)
    ranges = collect_ranges(model, open_dataset({"x": x[:32]}, model), plan.tensors, "minmax")
    result = correct_biases(model, plan, PER_TENSOR, ranges, ctx, BiasCorrectionConfig())
    assert result.details["mode"] == "analytical"
    assert result.details["layers_corrected"] == 1  # conv2; conv1 reads the graph input: no statistics
    assert "no BatchNorm statistics" in result.details["skip_reasons"]["conv1"]
    plain = apply_qdq(model, plan, ranges, PER_TENSOR).model
    corrected = apply_qdq(result.model, plan, ranges, PER_TENSOR).model
    before = np.abs(_channel_mean_error(plain, float_model, x))
    after = np.abs(_channel_mean_error(corrected, float_model, x))
    # the analytical E[relu(z)] is the true one here; what is left is the mean of the activation rounding
    # and the sampling noise of 512 x 16 values: most (>= 80%) of the shift must go
    assert before.min() > 0.02
    assert after.max() <= 0.2 * before.min(), (before, after)


def test_empirical_mode_without_data_is_refused():
    model = gemm_layer()
    plan = plan_qdq(model, PER_TENSOR)
    with pytest.raises(ConfigError, match="needs calibration data"):
        correct_biases(model, plan, PER_TENSOR, {}, QuantizeContext(), BiasCorrectionConfig(mode="empirical"))


@pytest.mark.parametrize("lo, hi", [(0.0, math.inf), (0.0, 6.0), (-1.0, 2.0), (-math.inf, 0.5)])
def test_clipped_normal_mean_matches_monte_carlo_and_integration(lo, hi):
    mu = np.array([-2.0, -0.3, 0.0, 0.7, 3.0, 7.0])
    sigma = np.array([1.0, 0.5, 2.0, 1.5, 0.1, 3.0])
    closed = clipped_normal_mean(mu, sigma, lo, hi)
    grid = normal_mean_of(lambda z: np.clip(z, lo, hi), mu, sigma)
    # the closed form and a 4001-point integration agree to far below float32 resolution
    np.testing.assert_allclose(closed, grid, atol=1e-6)
    z = np.random.default_rng(0).standard_normal((400_000, 1)) * sigma + mu
    # Monte Carlo with 4e5 samples: standard error <= sigma / 632 (< 5e-3 for sigma = 3); 5 standard errors
    np.testing.assert_allclose(closed, np.clip(z, lo, hi).mean(axis=0), atol=5 * sigma.max() / 632)


def test_clipped_normal_mean_of_a_constant_is_the_clipped_constant():
    np.testing.assert_allclose(clipped_normal_mean(np.array([-1.0, 3.0, 8.0]), np.zeros(3), 0.0, 6.0), [0, 3, 6])


def test_hard_swish_mean_matches_monte_carlo():
    mu, sigma = np.array([-3.0, 0.0, 1.0, 4.0]), np.array([1.0, 2.0, 0.5, 3.0])
    hswish = lambda z: z * np.clip(z / 6 + 0.5, 0, 1)  # noqa: E731
    z = np.random.default_rng(1).standard_normal((400_000, 1)) * sigma + mu
    # same Monte Carlo bound as above (hard-swish is 1-Lipschitz-ish: its std <= sigma * 1.5)
    np.testing.assert_allclose(normal_mean_of(hswish, mu, sigma), hswish(z).mean(axis=0), atol=7.5 * 3 / 632)


# --- config and pipeline -----------------------------------------------------------------------


def test_config_refuses_unknown_keys_and_names_the_valid_ones():
    with pytest.raises(ConfigError) as exc:
        recipe_options({"input": "float"})
    assert "input" in exc.value.message and "inputs" in exc.value.hint


@pytest.mark.parametrize("options", [{"mode": "magic"}, {"inputs": "int"}, {"samples": 0}, {"rounds": True}])
def test_config_refuses_bad_values(options):
    with pytest.raises(ConfigError):
        recipe_options(options)


def test_quantize_with_bias_correction_reduces_logit_mean_error_on_the_sample_mobilenet(tmp_path):
    src = SAMPLE_MODELS / "mobilenetv2_digits.onnx"
    if not src.exists():
        pytest.skip("sample models not built")
    calib, test = SAMPLE_MODELS / "calib.npz", np.load(SAMPLE_MODELS / "test.npz")["input"]
    recipe = QuantizeRecipe(per_channel=False)
    quantize(src, tmp_path / "plain.onnx", calib, recipe)
    summary = quantize(src, tmp_path / "bc.onnx", calib, recipe.replace(passes=("bias-correction",)))
    entry = next(p for p in summary.passes if p["pass"] == "bias-correction")
    assert entry["layers_corrected"] >= 15 and entry["channels_corrected"] > 500
    assert "bias_correction_s" in summary.timings

    def logits(name):
        sess = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        return sess.run(None, {"input": test})[0].astype(np.float64)

    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": test})[0]
    err_plain, err_bc = logits("plain.onnx") - ref, logits("bc.onnx") - ref
    # held-out data (test.npz, not calibration): the mean logit error per class and the error energy drop.
    # Only part of the mean error is weight rounding (activation rounding and clipping shift means too,
    # and bias correction leaves those), so the claim is a decrease, not its removal.
    assert np.abs(err_bc.mean(axis=0)).sum() < np.abs(err_plain.mean(axis=0)).sum()
    assert np.square(err_bc).sum() < np.square(err_plain).sum()


# --- float-input means gathered by calibration ------------------------------------------------------


@pytest.mark.parametrize("build, x_shape", [(gemm_layer, (96, 32)), (conv_layer, (64, 4, 6, 6))])
def test_float_input_means_from_calibration_give_the_corrections_of_a_run_of_their_own(build, x_shape):
    from onnxq.passes.bias_correction import float_input_tensors

    model = build()
    x = _positive_inputs(x_shape, 5)
    plan = plan_qdq(model, PER_TENSOR)
    ctx = _ctx(model, x)
    means = float_input_tensors(model, plan)
    assert means == {"x": build is conv_layer}  # the Conv keeps its [C, H, W] map, the Gemm a vector
    ranges = collect_ranges(model, ctx.calib, plan.tensors, "minmax", batch_size=7, mean_tensors=means)
    assert set(ranges.means) == {"x"} and set(ranges) == set(plan.tensors)  # means add no range
    np.testing.assert_allclose(ranges.means["x"], x.mean(axis=0, dtype=np.float64), rtol=1e-6)
    cfg = BiasCorrectionConfig(inputs="float")
    own = correct_biases(model, plan, PER_TENSOR, ranges, ctx, cfg)
    ctx.input_means = ranges.means
    fused = correct_biases(model, plan, PER_TENSOR, ranges, ctx, cfg)
    assert (own.details["means_from"], fused.details["means_from"]) == ("own run", "calibration")
    b_own = numpy_helper.to_array(next(t for t in own.model.graph.initializer if t.name == "b"))
    b_fused = numpy_helper.to_array(next(t for t in fused.model.graph.initializer if t.name == "b"))
    np.testing.assert_allclose(b_fused, b_own, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(b_own, numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b")))
    # fewer samples than calibration saw: the means would differ, so bias correction runs its own
    partial = correct_biases(model, plan, PER_TENSOR, ranges, ctx, BiasCorrectionConfig(inputs="float", samples=10))
    assert partial.details["means_from"] == "own run"


def test_quantize_with_float_input_bias_correction_takes_its_means_from_calibration(tmp_path):
    src = SAMPLE_MODELS / "mobilenetv2_digits.onnx"
    options = {"bias-correction": {"inputs": "float"}}
    recipe = QuantizeRecipe(per_channel=False, passes=("bias-correction",), pass_options=options)
    summary = quantize(src, tmp_path / "bc.onnx", SAMPLE_MODELS / "calib.npz", recipe)
    entry = next(p for p in summary.passes if p["pass"] == "bias-correction")
    assert entry["means_from"] == "calibration" and entry["layers_corrected"] >= 15


@pytest.mark.parametrize("group", [0, -1, 3])
def test_a_conv_whose_group_does_not_split_its_weight_is_skipped_with_a_reason(group):
    from onnxq.passes.bias_correction import _layer

    model = conv_layer()  # weight [8, 4, 3, 3]
    model.graph.node[0].attribute.append(helper.make_attribute("group", group))
    reason = _layer(model.graph.node[0], {t.name: t for t in model.graph.initializer})
    assert isinstance(reason, str) and f"group {group}" in reason


def test_a_conv_with_an_empty_weight_is_skipped_with_a_reason():
    from onnxq.passes.bias_correction import _layer

    model = conv_layer()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((0, 4, 3, 3), np.float32), "w"))
    assert "is empty" in _layer(model.graph.node[0], {t.name: t for t in model.graph.initializer})
