"""Cross-layer equalization and high-bias absorption (passes/cle.py): the float function is kept, the
per-channel weight ranges of each pair are evened out, and pairs that must not be touched are not."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLE_MODELS, SHARED_MODELS
from onnxq.cli import main
from onnxq.data import open_dataset
from onnxq.errors import ConfigError
from onnxq.model import load_model
from onnxq.passes._linear_layers import channel_ranges
from onnxq.passes.cle import VERIFY_TOLERANCE, CLEConfig, equalize, find_pairs
from onnxq.passes.prepare import PrepareConfig, prepare_model, relative_error
from onnxq.passes.qdq import name_nodes
from onnxq.quantize.driver import quantize
from onnxq.quantize.pipeline import BNStats, QuantizeContext
from onnxq.quantize.recipe import QuantizeRecipe

# CLE rescales each weight in float64 and rounds it to float32 once, so outputs move by a few float32
# ulps (~1e-7 relative); 1e-5 (the pass's own verify tolerance) leaves two orders of magnitude of headroom.
TOL = VERIFY_TOLERANCE
CALIB = SAMPLE_MODELS / "calib.npz"
TEST = SAMPLE_MODELS / "test.npz"

def recipe_options(options):
    """The pass's config as a recipe reads it (the one parser every pass's options go through)."""
    return QuantizeRecipe.from_dict({"passes": ["cle"], "cle": options}).pass_options["cle"]



# --- model builders ----------------------------------------------------------------------------


def _spread_conv(rng, out_c: int, in_c: int, k: int, spread: float = 100.0) -> np.ndarray:
    """A conv weight whose output channels' ranges differ by up to ``spread``x (what CLE is for)."""
    w = rng.standard_normal((out_c, in_c, k, k))
    return (w * np.geomspace(1.0, spread, out_c)[rng.permutation(out_c)][:, None, None, None]).astype(np.float32)


def _model(nodes, inits, x_shape, y_name="y", opset=14) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, [None] * len(x_shape))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _act_nodes(act: str, src: str, dst: str, inits: dict) -> list[onnx.NodeProto]:
    if act == "none":
        return [helper.make_node("Identity", [src], [dst], name="act")]
    if act == "relu6":
        inits["lo"], inits["hi"] = np.array(0.0, np.float32), np.array(6.0, np.float32)
        return [helper.make_node("Clip", [src, "lo", "hi"], [dst], name="act")]
    if act == "prelu":
        inits["slope"] = np.linspace(0.1, 0.3, 8, dtype=np.float32).reshape(8, 1, 1)
        return [helper.make_node("PRelu", [src, "slope"], [dst], name="act")]
    return [helper.make_node(act, [src], [dst], name="act")]


def conv_conv(act: str = "Relu", seed: int = 0) -> onnx.ModelProto:
    """x [N,4,8,8] -> Conv 3x3 (8 ch, spread ranges) -> act -> Conv 3x3 (6 ch) -> y."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": _spread_conv(rng, 8, 4, 3),
        "b1": rng.standard_normal(8).astype(np.float32),
        "w2": rng.standard_normal((6, 8, 3, 3)).astype(np.float32),
        "b2": rng.standard_normal(6).astype(np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    nodes += _act_nodes(act, "c1", "a1", inits)
    if act == "none":  # no node between the layers
        nodes = nodes[:1]
        nodes[0].output[0] = "a1"
    nodes.append(helper.make_node("Conv", ["a1", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1]))
    return _model(nodes, inits, ["N", 4, 8, 8])


def conv_dw_conv(seed: int = 0) -> onnx.ModelProto:
    """Conv 1x1 (expand) -> Relu -> depthwise 3x3 -> Relu -> Conv 1x1 (project): a three-layer chain."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": _spread_conv(rng, 8, 4, 1),
        "b1": rng.standard_normal(8).astype(np.float32),
        "wd": _spread_conv(rng, 8, 1, 3, spread=300.0),
        "bd": rng.standard_normal(8).astype(np.float32),
        "w3": rng.standard_normal((5, 8, 1, 1)).astype(np.float32),
        "b3": rng.standard_normal(5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="expand"),
        helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "wd", "bd"], ["c2"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
        helper.make_node("Conv", ["a2", "w3", "b3"], ["y"], name="project"),
    ]
    return _model(nodes, inits, ["N", 4, 8, 8])


def gemm_gemm(trans_b: int, seed: int = 0) -> onnx.ModelProto:
    """x [N,10] -> Gemm (16 out, spread ranges) -> Relu -> Gemm (3 out) -> y, with transB as given."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((16, 10)) * np.geomspace(1, 100, 16)[:, None]
    w2 = rng.standard_normal((3, 16))
    inits = {
        "w1": (w1 if trans_b else w1.T).astype(np.float32),
        "b1": rng.standard_normal(16).astype(np.float32),
        "w2": (w2 if trans_b else w2.T).astype(np.float32),
        "b2": rng.standard_normal((1, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["g1"], name="fc1", transB=trans_b, alpha=0.5),
        helper.make_node("Relu", ["g1"], ["a1"], name="relu"),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["y"], name="fc2", transB=trans_b, beta=2.0),
    ]
    return _model(nodes, inits, ["N", 10])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _x(shape, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _pair_mismatch(model: onnx.ModelProto) -> float:
    """max over pairs and channels of |log(r1_i / r2_i)|: 0 when every pair is equalized."""
    pairs, _ = find_pairs(model, relu6_to_relu=True)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    worst = 0.0
    for p in pairs:
        r1 = channel_ranges(inits[p.first.weight].astype(np.float64), p.first.out_axis)
        r2 = channel_ranges(inits[p.second.weight].astype(np.float64), p.second.in_axis)
        worst = max(worst, float(np.abs(np.log(r1 / r2)).max()))
    return worst


# --- constructed chains ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, x_shape, pairs",
    [
        (lambda: conv_conv("Relu"), (3, 4, 8, 8), 1),
        (lambda: conv_conv("none"), (3, 4, 8, 8), 1),
        (lambda: conv_conv("LeakyRelu"), (3, 4, 8, 8), 1),
        (lambda: conv_conv("prelu"), (3, 4, 8, 8), 1),
        (conv_dw_conv, (3, 4, 8, 8), 2),
        (lambda: gemm_gemm(trans_b=1), (5, 10), 1),
        (lambda: gemm_gemm(trans_b=0), (5, 10), 1),
    ],
    ids=["conv-relu-conv", "conv-conv", "conv-leakyrelu-conv", "conv-prelu-conv", "conv-dw-conv", "gemm-gemm-tB1",
         "gemm-gemm-tB0"],
)  # fmt: skip
def test_cle_keeps_float_outputs_and_equalizes_each_pair(build, x_shape, pairs):
    model = build()
    x = _x(x_shape)
    before_mismatch = _pair_mismatch(model)
    result = equalize(model, CLEConfig(high_bias_absorption=False))
    assert result.details["pairs_equalized"] == pairs
    assert result.details["converged"]
    assert relative_error(_run(model, x), _run(result.model, x)) <= TOL
    # the pair's ranges were far apart (spread 100x) and are now equal up to the sweep tolerance (1e-4 in
    # log space; a middle layer moved by the other pair's last sweep adds at most that again)
    assert before_mismatch > 1.0
    assert _pair_mismatch(result.model) < 1e-3
    assert result.details["largest_range_ratio_after"] < result.details["largest_range_ratio_before"]
    assert _pair_mismatch(model) == before_mismatch  # the input model is not modified


def test_depthwise_middle_layer_takes_part_in_both_pairs():
    pairs, skipped = find_pairs(conv_dw_conv())
    assert [(p.first.name, p.second.name) for p in pairs] == [("expand", "depthwise"), ("depthwise", "project")]
    assert pairs[0].second.kind == "depthwise" and pairs[1].first.kind == "depthwise"
    assert skipped == {}


def test_relu6_pair_is_left_untouched_by_default():
    model = conv_conv("relu6")
    result = equalize(model, CLEConfig())
    assert result.details["pairs_equalized"] == 0
    assert "ReLU6" in result.details["skip_reasons"]["conv1 -> conv2"]
    weights = lambda m: {t.name: numpy_helper.to_array(t).tobytes() for t in m.graph.initializer}  # noqa: E731
    assert weights(result.model) == weights(model)
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Clip", "Conv"]


def test_relu6_to_relu_is_explicit_and_reported():
    model = conv_conv("relu6")
    x = _x((3, 4, 8, 8)) * 4  # large enough that the clip at 6 bites
    result = equalize(model, CLEConfig(relu6_to_relu=True, high_bias_absorption=False))
    assert result.details["pairs_equalized"] == 1
    assert result.details["relu6_replaced"] == 1 and result.details["relu6_replaced_nodes"] == ["act"]
    assert result.details["float_function_kept"] is False
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu", "Conv"]
    # the replacement is the only change: the equalized model computes conv2(relu(conv1(x)))
    relu_model = onnx.ModelProto()
    relu_model.CopyFrom(model)
    relu_model.graph.node[1].CopyFrom(helper.make_node("Relu", ["c1"], ["a1"], name="act"))
    assert relative_error(_run(relu_model, x), _run(result.model, x)) <= TOL
    assert relative_error(_run(model, x), _run(result.model, x)) > 1e-3  # and it did change the function


@pytest.mark.parametrize("act", ["Sigmoid", "HardSwish", "Tanh"])
def test_pairs_across_non_homogeneous_activations_are_skipped(act):
    model = conv_conv(act)
    result = equalize(model, CLEConfig())
    assert result.details["pairs_equalized"] == 0
    assert "not positively homogeneous" in result.details["skip_reasons"]["conv1 -> conv2"]


def test_pair_whose_intermediate_has_another_reader_is_skipped():
    model = conv_conv("Relu")
    model.graph.output.append(helper.make_tensor_value_info("a1", TensorProto.FLOAT, [None] * 4))
    x = _x((2, 4, 8, 8))
    result = equalize(model, CLEConfig())
    assert result.details["pairs_equalized"] == 0
    assert "readers" in next(iter(result.details["skip_reasons"].values()))
    for a, b in zip(_run_all(model, x), _run_all(result.model, x), strict=True):
        assert np.array_equal(a, b)


def _run_all(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def test_per_channel_bias_add_after_the_first_layer_is_rescaled():
    """PaddlePaddle writes Conv (no bias) -> Add(per-channel constant): the Add is the bias."""
    model = conv_conv("Relu")
    g = model.graph
    b1 = next(t for t in g.initializer if t.name == "b1")
    b1.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(b1).reshape(1, 8, 1, 1), "b1"))
    conv1 = g.node[0]
    del conv1.input[2]
    conv1.output[0] = "c0"
    g.node.insert(1, helper.make_node("Add", ["c0", "b1"], ["c1"], name="bias_add"))
    onnx.checker.check_model(model)
    x = _x((2, 4, 8, 8))
    result = equalize(model, CLEConfig(high_bias_absorption=False))
    assert result.details["pairs_equalized"] == 1
    assert relative_error(_run(model, x), _run(result.model, x)) <= TOL
    assert _pair_mismatch(result.model) < 1e-3


def test_bn_statistics_follow_the_rescaling():
    """prepare records BN statistics of each folded layer's output; CLE divides that output by s per
    channel, so the recorded mean and std must be divided by the same s as the weight rows."""
    rng = np.random.default_rng(3)
    model = conv_conv("Relu")
    g = model.graph
    g.node[0].output[0] = "pre_bn"
    bn = {
        "gamma": rng.uniform(0.5, 2, 8).astype(np.float32),
        "beta": rng.standard_normal(8).astype(np.float32),
        "mean": rng.standard_normal(8).astype(np.float32),
        "var": rng.uniform(0.5, 2, 8).astype(np.float32),
    }
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in bn.items())
    g.node.insert(1, helper.make_node("BatchNormalization", ["pre_bn", "gamma", "beta", "mean", "var"], ["c1"]))
    ctx = QuantizeContext()
    prepared = prepare_model(model, PrepareConfig(), ctx).model
    old = ctx.bn_stats["conv1"]
    w_old = numpy_helper.to_array(next(t for t in prepared.graph.initializer if t.name == "w1"))
    result = equalize(prepared, CLEConfig(high_bias_absorption=False), ctx)
    w_new = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "w1"))
    inv_s = channel_ranges(w_new.astype(np.float64), 0) / channel_ranges(w_old.astype(np.float64), 0)
    new = ctx.bn_stats["conv1"]
    assert not np.allclose(inv_s, 1.0)
    # float32 storage of the statistics and weights: 1e-5 relative
    np.testing.assert_allclose(new.std, old.std * inv_s, rtol=1e-5)
    np.testing.assert_allclose(new.mean, old.mean * inv_s, rtol=1e-5, atol=1e-6)


# --- high-bias absorption ----------------------------------------------------------------------


def _high_bias_chain(second_pads: int) -> onnx.ModelProto:
    """Conv 1x1 whose channel 0 carries a bias of +20 (so it never goes below ~15) -> Relu -> Conv."""
    rng = np.random.default_rng(5)
    b1 = rng.standard_normal(8).astype(np.float32)
    b1[0] = 20.0
    inits = {
        "w1": (rng.standard_normal((8, 4, 1, 1)) * 0.5).astype(np.float32),
        "b1": b1,
        "w2": rng.standard_normal((6, 8, 3, 3)).astype(np.float32),
        "b2": rng.standard_normal(6).astype(np.float32),
    }
    pads = [second_pads] * 4
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["a1"], name="relu"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["y"], name="conv2", pads=pads),
    ]
    return _model(nodes, inits, ["N", 4, 8, 8])


def _ctx_with_data(model, x: np.ndarray) -> QuantizeContext:
    ctx = QuantizeContext(calib=open_dataset([{"x": s[None]} for s in x], model))
    ctx.batch_size = 8
    return ctx


def _pre_act_max(model, x) -> float:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return float(sess.run(["c1"], {"x": x})[0].max())


def test_high_bias_absorption_from_data_keeps_outputs_and_narrows_the_range():
    model = _high_bias_chain(second_pads=0)
    x = _x((64, 4, 8, 8))  # 64 samples x 64 positions = 4096 values per channel (>= 1000 needed)
    ctx = _ctx_with_data(model, x)
    result = equalize(model, CLEConfig(absorption_source="data", verify=True), ctx)
    assert result.details["absorption_source"] == "data"
    assert result.details["bias_absorbed_channels"] >= 1
    assert result.details["float_function_kept"] is True
    assert result.details["verify_max_rel_error"] <= TOL
    # on the calibration data the function is kept exactly (every value stayed above what was moved)
    assert relative_error(_run(model, x), _run(result.model, x)) <= TOL
    # the +20 channel no longer dominates the activation's range
    before = _pre_act_max(equalize(model, CLEConfig(high_bias_absorption=False), ctx).model, x)
    assert _pre_act_max(result.model, x) < 0.6 * before


def test_high_bias_absorption_skips_a_padded_second_layer():
    model = _high_bias_chain(second_pads=1)
    x = _x((64, 4, 8, 8))
    result = equalize(model, CLEConfig(absorption_source="data"), _ctx_with_data(model, x))
    assert result.details["bias_absorbed_channels"] == 0
    assert "pads" in result.details["absorption_skipped"]["conv1 -> conv2"]
    assert relative_error(_run(model, x), _run(result.model, x)) <= TOL


def test_high_bias_absorption_needs_enough_values_per_channel():
    model = _high_bias_chain(second_pads=0)
    x = _x((4, 4, 8, 8))  # 4 x 64 = 256 values per channel: too few to trust their minimum
    result = equalize(model, CLEConfig(absorption_source="data"), _ctx_with_data(model, x))
    assert result.details["bias_absorbed_channels"] == 0
    assert "fewer than" in result.details["absorption_skipped"]["conv1 -> conv2"]


def test_data_free_absorption_uses_batchnorm_statistics_and_says_it_is_approximate():
    model = _high_bias_chain(second_pads=0)
    ctx = QuantizeContext()  # no data
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    # x ~ N(0, 1) per input channel, so conv1's output channel o is N(b1[o], sum(w1[o]^2)) exactly
    std = np.sqrt(np.square(inits["w1"]).sum(axis=(1, 2, 3)))
    ctx.bn_stats = {"conv1": BNStats(output="c1", mean=inits["b1"].astype(np.float32), std=std)}
    result = equalize(model, CLEConfig(absorption_sigmas=5.0), ctx)
    assert result.details["absorption_source"] == "bn"
    assert result.details["bias_absorbed_channels"] == 1  # only the +20 channel is 5 sigma above 0
    assert result.details["float_function_kept"] is False
    x = _x((16, 4, 8, 8))
    # 1024 values of channel 0: the chance that one lies 5 sigma below its mean is about 3e-4, so the
    # Relu clips nothing that moved and the outputs agree to float32 rounding
    assert relative_error(_run(model, x), _run(result.model, x)) <= TOL
    assert ctx.bn_stats["conv1"].mean[0] < inits["b1"][0] / 2  # the shift is recorded


# --- config ------------------------------------------------------------------------------------


def test_config_refuses_unknown_keys_and_names_the_valid_ones():
    with pytest.raises(ConfigError) as exc:
        recipe_options({"relu6_too_relu": True})
    assert "relu6_too_relu" in exc.value.message and "relu6_to_relu" in exc.value.hint


@pytest.mark.parametrize(
    "options", [{"iterations": 0}, {"tolerance": -1.0}, {"relu6_to_relu": "yes"}, {"absorption_source": "x"}]
)
def test_config_refuses_bad_values(options):
    with pytest.raises(ConfigError):
        recipe_options(options)


# --- real models -------------------------------------------------------------------------------


def _prepared(path, calib_source, batch_size):
    model = load_model(path)
    ctx = QuantizeContext(calib=open_dataset(calib_source, model))
    ctx.batch_size = ctx.calib.check_batch_size(batch_size)
    model = name_nodes(prepare_model(model, PrepareConfig(), ctx).model)
    ctx.calib = open_dataset(ctx.calib, model)
    return model, ctx


def _outputs(model, feeds):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _weights_changed(before: onnx.ModelProto, after: onnx.ModelProto) -> int:
    """How many initializers of ``before`` hold other values in ``after``."""
    new = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    old = {t.name: numpy_helper.to_array(t) for t in before.graph.initializer}
    return sum(name not in new or not np.array_equal(value, new[name]) for name, value in old.items())


def _relu6_as_relu(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The float model with the named Clip(0, 6) nodes replaced by Relu, written here without CLE."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.name in names:
            node.op_type = "Relu"
            del node.input[1:]
    return out


@pytest.mark.parametrize("name, pairs", [("resnet_digits", 2), ("mlp_digits", 2), ("mobilenetv2_digits", 10)])
def test_cle_keeps_float_outputs_of_sample_models_on_held_out_data(name, pairs):
    """Every pair is equalized (MobileNetV2's go through ReLU6, so they need relu6_to_relu: the reference is then
    the float model with those Clips as Relu), the weights really change, and held-out outputs are kept."""
    path = SAMPLE_MODELS / f"{name}.onnx"
    if not path.exists():
        pytest.skip("sample models not built")
    model, ctx = _prepared(path, CALIB, 50)
    test = {"input": np.load(TEST)["input"][:200]}
    relu6 = name == "mobilenetv2_digits"
    result = equalize(model, CLEConfig(high_bias_absorption=False, verify=True, relu6_to_relu=relu6), ctx)
    d = result.details
    assert d["pairs_equalized"] == pairs and d["relu6_replaced"] == (pairs if relu6 else 0)
    assert _weights_changed(model, result.model) >= pairs  # each pair rescales at least its first weight
    reference = _relu6_as_relu(model, d["relu6_replaced_nodes"]) if relu6 else model
    for a, b in zip(_outputs(reference, test), _outputs(result.model, test), strict=True):
        assert relative_error(a, b) <= TOL
    assert d["largest_range_ratio_after"] < d["largest_range_ratio_before"]


def test_cle_leaves_mobilenetv2_untouched_without_relu6_replacement():
    """Its pairs all pass through ReLU6 or other readers: without relu6_to_relu the model comes back as it was."""
    path = SAMPLE_MODELS / "mobilenetv2_digits.onnx"
    if not path.exists():
        pytest.skip("sample models not built")
    model, ctx = _prepared(path, CALIB, 50)
    result = equalize(model, CLEConfig(high_bias_absorption=False), ctx)
    d = result.details
    assert d["pairs_equalized"] == 0 and not result.modified
    relu6 = [r for r in d["skip_reasons"].values() if r.startswith("Clip(0, 6) (ReLU6)")]
    assert len(relu6) == 10 and d["pairs_skipped"] == 13  # the other three: a tensor read twice (stem, residuals)
    assert _weights_changed(model, result.model) == 0


def test_cle_on_ppocr_equalizes_its_depthwise_chains_and_keeps_its_outputs():
    folder = SHARED_MODELS / "ppocr_mobile_v2_cls"
    if not folder.exists():
        pytest.skip("../shared/models is absent")
    real = [np.load(folder / "real_inputs" / f"input_0{i}.npy", allow_pickle=False) for i in range(5)]
    model, ctx = _prepared(folder / "model.onnx", {"x": np.concatenate(real[:3])}, 6)
    result = equalize(model, CLEConfig(), ctx)
    d = result.details
    assert d["pairs_equalized"] >= 10  # expand -> dw -> project chains and squeeze-excite pairs
    assert any("HardSwish" in r for r in d["skip_reasons"].values())
    assert d["largest_range_ratio_after"] < d["largest_range_ratio_before"] / 4
    assert d["float_function_kept"]
    held_out = {"x": np.concatenate(real[3:])}  # other images than the calibration lines
    for a, b in zip(_outputs(model, held_out), _outputs(result.model, held_out), strict=True):
        assert relative_error(a, b) <= TOL


def test_quantize_runs_cle_before_calibration_and_reports_it(tmp_path, capsys):
    src = SAMPLE_MODELS / "resnet_digits.onnx"
    if not src.exists():
        pytest.skip("sample models not built")
    out = tmp_path / "q.onnx"
    code = main(
        ["quantize", str(src), "-o", str(out), "--calib", str(CALIB), "--per-tensor", "--passes", "cle",
         "--verify", "--no-progress"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "pass cle:" in text and "pairs_equalized=" in text and "largest_range_ratio_before=" in text
    summary = quantize(src, tmp_path / "q2.onnx", CALIB, QuantizeRecipe(per_channel=False, passes=("cle",)))
    entry = next(p for p in summary.passes if p["pass"] == "cle")
    assert entry["pairs_equalized"] >= 2
    assert "cle_s" in summary.timings and summary.timings["cle_s"] < summary.timings["total_s"]


def test_a_conv_whose_bias_does_not_match_its_channels_is_not_equalized():
    # find_pairs took the layer and ParamStore.vector crashed on None ("'NoneType' object has no attribute 'copy'")
    model = conv_conv("Relu")
    bias = next(t for t in model.graph.initializer if t.name == "b1")
    bias.CopyFrom(numpy_helper.from_array(np.ones(5, np.float32), "b1"))  # conv1 has 8 output channels
    result = equalize(model, CLEConfig())
    assert result.details["pairs_equalized"] == 0 and result.model.graph.initializer[1].dims == [5]


def test_an_empty_weight_gives_no_layer_view():
    # np.abs(w).max(axis=...) on a zero-size weight raised ValueError in _largest_range_ratio
    model = conv_conv("Relu")
    weight = next(t for t in model.graph.initializer if t.name == "w1")
    weight.CopyFrom(numpy_helper.from_array(np.zeros((8, 4, 0, 3), np.float32), "w1"))  # a 0x3 kernel
    assert equalize(model, CLEConfig()).details["pairs_equalized"] == 0
