"""Numeric behaviour that one-line mistakes (bench/mutants.py) broke with no test failing: the int32 bias path, axes,
the observers' constants and models, and the options that reach them. Every expected value is derived here
(numpy, the papers' constants), never by the code under test."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.quantize.observers import EntropyObserver, MSEObserver
from onnxq.quantize.qtypes import QParams, qtype, quantize


def _feed(observer, x: np.ndarray, batch: int):
    for start in range(0, len(x), batch):
        observer.update(x[start : start + batch])
    return observer


# --- qtypes --------------------------------------------------------------------------------------------------


def test_int32_values_are_quantized_exactly_past_float32s_mantissa():
    """2**24 + 1 has no float32 spelling: dividing in float32 would store 16777216."""
    qp = QParams(np.float32(1.0), np.int32(0), None, qtype("int32"))
    x = np.array([2.0**24 + 1, -(2.0**25 + 3), 123456789.0])
    np.testing.assert_array_equal(quantize(x, qp), np.array([16777217, -33554435, 123456789], np.int32))  # exact


def test_a_negative_axis_counts_from_the_last_dimension():
    scale = np.array([0.5, 0.25, 0.125], np.float32)
    x = np.array([[1.0, 1.0, 1.0], [-0.3, 0.3, 0.2]], np.float32)
    want = np.clip(np.rint(x / scale), -128, 127)  # one scale per column, by hand
    for axis in (-1, 1):
        got = quantize(x, QParams(scale, np.zeros(3, np.int8), axis, qtype("int8")))
        np.testing.assert_array_equal(got, want.astype(np.int8))


# --- observers -------------------------------------------------------------------------------------------------


def test_entropy_uses_tensorrts_128_quantized_bins_by_default():
    """TensorRT's entropy calibration spreads the positive half of int8 over 128 levels (Migacz, GTC 2017)."""
    x = np.random.default_rng(21).standard_normal(200_000).astype(np.float32)
    default = _feed(EntropyObserver(), x, 20_000).finalize()
    assert default == _feed(EntropyObserver(num_quantized_bins=128), x, 20_000).finalize()
    assert default != _feed(EntropyObserver(num_quantized_bins=256), x, 20_000).finalize()  # the test can tell


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_entropy_keeps_one_sided_data_that_misses_zero_even_with_a_full_histogram(sign):
    """Enough values for the KL search (more than 16 per bin of 2048): the range must stay [min, max]."""
    x = (sign * np.random.default_rng(22).uniform(0.65, 1.64, 40_000)).astype(np.float32)
    assert _feed(EntropyObserver(), x, 4000).finalize() == (float(x.min()), float(x.max()))


def _mse_model_errors(x: np.ndarray, obs: MSEObserver) -> tuple[np.ndarray, np.ndarray]:
    """The MSE observer's documented error model, one threshold at a time: for T = k * bin width (k = 1..n),
    sum over bins beyond T of count * (centre - T)**2, plus step**2 / 12 for each non-zero value below T."""
    n, w = obs.hist.num_bins, obs.hist.bin_width
    counts, _ = np.histogram(np.abs(x).astype(np.float64), bins=n, range=(0.0, n * w))
    centres = (np.arange(n) + 0.5) * w
    zeros = int((x == 0).sum())
    errors, thresholds = [], []
    for k in range(1, n + 1):
        t = k * w
        clip = float(np.sum(counts[k:] * (centres[k:] - t) ** 2))
        lo, hi = min(max(float(x.min()), -t), 0.0), max(min(float(x.max()), t), 0.0)
        step = max(-lo, hi) / ((obs.num_levels - 1) // 2) if obs.symmetric else (hi - lo) / (obs.num_levels - 1)
        errors.append(clip + (counts[:k].sum() - zeros) * step**2 / 12)
        thresholds.append(t)
    return np.array(errors), np.array(thresholds)


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_errors_follow_the_documented_model_at_every_bin_edge(symmetric):
    rng = np.random.default_rng(23)
    x = np.concatenate([rng.laplace(size=20_000), np.zeros(500)]).astype(np.float32)
    obs = _feed(MSEObserver(num_bins=256, symmetric=symmetric), x, 2000)
    errors, thresholds = obs.errors()
    want_errors, want_thresholds = _mse_model_errors(x, obs)
    np.testing.assert_array_equal(thresholds, want_thresholds)  # edges k * w, exact in binary
    np.testing.assert_allclose(errors, want_errors, rtol=1e-9)  # the same sums in another order: round-off only
    best = float(want_thresholds[np.argmin(want_errors)])
    assert obs.finalize() == (max(float(x.min()), -best), min(float(x.max()), best))


# --- the percentile option reaches the observer ----------------------------------------------------------------


def test_the_recipes_percentile_sets_the_calibrated_range(tmp_path):
    from onnxq.quantize.driver import quantize as quantize_model
    from onnxq.quantize.recipe import QuantizeRecipe

    w = numpy_helper.from_array(np.full((2, 3, 1, 1), 0.1, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])], [w])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "m.onnx")
    x = np.random.default_rng(24).uniform(-1, 1, (400, 3, 4, 4)).astype(np.float32)
    recipe = QuantizeRecipe(method="percentile", percentile=90.0)
    quantize_model(tmp_path / "m.onnx", tmp_path / "q.onnx", {"x": x}, recipe)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "q.onnx").graph.initializer}
    t = float(np.percentile(np.abs(x), 90.0))  # about 0.9 for |x| uniform on [0, 1)
    # uint8 asymmetric over [-T, T]: scale 2T / 255. Tolerance: one histogram bin (1/2048 of the [0, 1) range)
    # on T; 99.99 (the default) would give T = 1.0, fifty bins away.
    assert float(inits["x_scale"]) == pytest.approx(2 * t / 255, abs=2 / 2048 / 255)


# --- int32 bias saturation --------------------------------------------------------------------------------------


def test_a_bias_too_large_for_int32_saturates_and_is_counted():
    from onnxq.passes.qdq import QDQConfig, apply_qdq, name_nodes, plan_qdq

    w = np.full((2, 3, 1, 1), 1e-4, np.float32)
    b = np.array([1e4, -1e4], np.float32)  # b / (s_x s_w) is about 3e15, far past int32
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])  # fmt: skip
    model = name_nodes(onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)))  # fmt: skip
    # asymmetric weights: their scales are not raised for the bias (tests/test_bias_saturation.py), so it saturates
    cfg = QDQConfig(symmetric_weights=False)
    plan = plan_qdq(model, cfg)
    result = apply_qdq(model, plan, {t: (-1e-3, 1e-3) if t == "x" else (0.0, 1e4) for t in plan.tensors}, cfg)
    bias = next(numpy_helper.to_array(t) for t in result.model.graph.initializer
                if t.data_type == TensorProto.INT32 and t.name.endswith("_quantized"))  # fmt: skip
    info = np.iinfo(np.int32)
    np.testing.assert_array_equal(bias, [info.max, info.min])  # clipped to int32's ends, not wrapped around
    assert result.details["bias_saturated_values"] == 2
