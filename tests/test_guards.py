"""Behaviour that one-line mistakes break and nothing else pinned (issue 19's surviving mutants), each checked
against a value derived independently of the code under test."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLE_MODELS
from onnxq.cli import main
from onnxq.data import open_dataset
from onnxq.errors import DataError
from onnxq.measure import timing
from onnxq.measure.metrics import OutputFidelity
from onnxq.quantize.driver import quantize
from onnxq.quantize.observers import PercentileObserver
from onnxq.quantize.recipe import QuantizeRecipe

# --- no pickle -----------------------------------------------------------------------------------------


def test_npz_and_npy_holding_python_objects_are_refused_not_unpickled(tmp_path):
    model = onnx.load(SAMPLE_MODELS / "mlp_digits.onnx")
    objects = np.empty(2, dtype=object)
    objects[:] = [np.zeros((1, 16, 16), np.float32), np.ones((1, 16, 16), np.float32)]
    np.savez(tmp_path / "o.npz", input=objects)  # numpy pickles object arrays
    np.save(tmp_path / "o.npy", objects, allow_pickle=True)
    for path in (tmp_path / "o.npz", tmp_path / "o.npy"):
        with pytest.raises(DataError) as info:
            open_dataset(path, model)
        assert "pickle" in info.value.message.lower() or "object" in info.value.message.lower(), info.value.message


# --- metrics on token outputs ----------------------------------------------------------------------------


def test_top1_agreement_is_over_the_last_axis_of_token_logits():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 6, 5)).astype(np.float32)  # [N, T, C]
    out = ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.8
    f = OutputFidelity("logits")
    f.update(out, ref, samples=4)
    want = float((out.argmax(-1) == ref.argmax(-1)).mean())  # over N*T positions
    wrong_axis = float((out.argmax(1) == ref.argmax(1)).mean())
    assert want != wrong_axis
    assert f.result()["top1_agreement"] == pytest.approx(want, abs=1e-12)


# --- placement guards ------------------------------------------------------------------------------------


def _conv_then(act: onnx.NodeProto, extra_inits=(), also_output: str | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])]
    if also_output:
        outputs.append(helper.make_tensor_value_info(also_output, TensorProto.FLOAT, ["N", 4, 6, 6]))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]), act],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        outputs,
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"), *extra_inits],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_a_clip_whose_lower_bound_is_not_zero_is_not_folded(tmp_path):
    lo = numpy_helper.from_array(np.array(0.5, np.float32), "lo")
    hi = numpy_helper.from_array(np.array(6.0, np.float32), "hi")
    model = _conv_then(helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip"), [lo, hi])
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    x = np.random.default_rng(2).standard_normal((16, 3, 6, 6)).astype(np.float32)
    summary = quantize(src, tmp_path / "q.onnx", {"x": x})
    assert "Clip" in {n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node}
    y = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"x": x})[0]
    # the lower bound survives, to one step of the output's uint8 grid over [0, 6]; folded into the Conv, the
    # Clip's 0.5 would be lost and the output would reach 0
    assert y.min() >= 0.5 - 6 / 255
    assert summary.nodes_quantized >= 1


def test_a_relu_whose_input_is_a_graph_output_is_not_folded(tmp_path):
    model = _conv_then(helper.make_node("Relu", ["c"], ["y"], name="relu"), also_output="c")
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    x = np.random.default_rng(3).standard_normal((16, 3, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(tmp_path / "x.npy")]) == 0
    q = onnx.load(tmp_path / "q.onnx")
    onnx.checker.check_model(q, full_check=True)
    c, y = ort.InferenceSession(str(tmp_path / "q.onnx")).run(["c", "y"], {"x": x})
    assert c.min() < 0 and y.min() >= 0  # c keeps its negative values: the Relu was not folded into it


# --- calibration constants ---------------------------------------------------------------------------------


def test_percentile_calibration_interpolates_inside_the_bin_at_the_default_99_99():
    assert QuantizeRecipe().percentile == 99.99 and PercentileObserver().percentile == 99.99
    x = np.random.default_rng(4).uniform(-1, 1, 1_000_000).astype(np.float32)
    obs = PercentileObserver()
    for chunk in np.array_split(x, 10):
        obs.update(chunk)
    lo, hi = obs.finalize()
    want = np.percentile(np.abs(x), 99.99)
    bin_width = 1 / 2048  # |x| < 1: the histogram spans [0, 1) in 2048 bins
    assert abs(hi - want) < 0.1 * bin_width  # linear interpolation in a bin of uniform data is exact to noise


# --- AdaRound's rectified sigmoid ---------------------------------------------------------------------------


def test_rectified_sigmoid_uses_the_papers_stretch():
    from onnxq.passes._adaround_opt import initial_v, rectified_sigmoid

    v = np.array([-20.0, -1.0, 0.0, 0.7, 20.0])
    h, dh = rectified_sigmoid(v)
    sig = 1 / (1 + np.exp(-v))
    want = np.clip(sig * 1.2 - 0.1, 0, 1)  # Nagel et al. 2020: zeta = 1.1, gamma = -0.1
    np.testing.assert_allclose(h, want, rtol=1e-12)
    assert h[2] == pytest.approx(0.5) and h[0] == 0 and h[-1] == 1
    np.testing.assert_allclose(dh[1:4], 1.2 * sig[1:4] * (1 - sig[1:4]), rtol=1e-12)
    rest = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(initial_v(rest), -np.log(1.2 / (rest + 0.1) - 1), atol=1e-12)  # h(V) = rest


# --- bench warm-up -----------------------------------------------------------------------------------------


def test_warm_up_runs_the_requested_number_of_times_or_for_the_time_given():
    calls = []
    assert timing.warm_up(lambda: calls.append(1), 7, None) == 7 and len(calls) == 7
    calls.clear()
    assert timing.warm_up(lambda: calls.append(1), 0, 0.0) == 1 and len(calls) == 1  # at least once


def test_bench_warms_each_model_up_before_timing(monkeypatch):
    from onnxq.measure import bench

    seen = []
    real = bench.warm_up
    monkeypatch.setattr(bench, "warm_up", lambda call, runs, s: seen.append(runs) or real(call, runs, s))
    bench.bench_models([SAMPLE_MODELS / "mlp_digits.onnx"], bench.BenchConfig(runs=3, warmup_runs=5))
    assert seen == [5]


# --- one options parser --------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("calib_samples", True), ("batch_size", False), ("opset", 13.0)])
def test_integer_options_refuse_booleans_and_floats(key, value):
    from onnxq.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{key} must be an integer"):
        QuantizeRecipe.from_dict({key: value})


# --- SmoothQuant's migration formula ---------------------------------------------------------------------


def test_smoothquant_scales_follow_the_papers_formula():
    from onnxq.passes.smoothquant import _scales

    xmax = np.array([8.0, 1.0, 0.5, 0.0])
    w = np.array([[2.0, -1.0], [0.5, 0.25], [4.0, 1.0], [1.0, 1.0]])  # rows are input channels
    wmax = np.abs(w).max(axis=1)
    alpha = 0.3  # s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (Xiao et al., 2023, eq. 4); s = 1 where X_j is 0
    want = np.where(xmax > 0, np.maximum(xmax, 1e-8) ** alpha / wmax ** (1 - alpha), 1.0)
    np.testing.assert_allclose(_scales(xmax, [w], alpha), want, rtol=1e-12)
