"""QDQ insertion: placement, axes, bias scales, folding, shared scales, exclusions and targets."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.errors import ConfigError
from onnxq.passes.qdq import QDQConfig, apply_qdq, name_nodes, plan_qdq
from onnxq.quantize.qtypes import QTYPES

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return name_nodes(onnx.shape_inference.infer_shapes(model))


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _run(model, feeds):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _ranges_from_run(model, plan, feeds):
    """Exact min/max of every planned tensor, taken by running the float model with them as outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for t in plan.tensors:
        if t not in existing:
            probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    values = dict(zip([o.name for o in probe.graph.output], _run(probe, feeds), strict=False))
    return {t: (float(values[t].min()), float(values[t].max())) for t in plan.tensors}


def _quantize(model, feeds, cfg=None):
    cfg = cfg or QDQConfig()
    plan = plan_qdq(model, cfg)
    result = apply_qdq(model, plan, _ranges_from_run(model, plan, feeds), cfg)
    onnx.checker.check_model(result.model, full_check=True)
    return plan, result


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _dq_nodes(model):
    return [n for n in model.graph.node if n.op_type == "DequantizeLinear"]


def _conv_relu_model(group=1, cin=4, cout=8):
    w = RNG.standard_normal((cout, cin // group, 3, 3)).astype(np.float32)
    w[0] *= 20  # one channel with a much larger range: per-channel scales must differ
    b = RNG.standard_normal(cout).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=group),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    return _model(nodes, [_vi("x", [1, cin, 6, 6])], [_vi("y", [1, cout, 6, 6])], {"w": w, "b": b})


def _conv_relu_error_bound(model, q, x: np.ndarray) -> np.ndarray:
    """The worst-case error, per output value, of _conv_relu_model's QDQ model ``q`` on ``x``, from its scales.

    With x^ = DQ(Q(x)) (|x^ - x| <= s_x / 2), w^ (|w^ - w| <= s_w / 2 per channel) and the int32 bias (s_b / 2),
    |conv(x^, w^) - conv(x, w)| <= conv(|x^|, s_w / 2) + conv(s_x / 2, |w|) over each output's window (the zero
    padding adds nothing); the folded Relu and the output's Q are 1-Lipschitz clips around a reference inside the
    calibrated range, plus the rounding to the output grid, s_y / 2. Float32 sums add ~1e-6 of the output, so
    1e-5 of max |output| is added for them. The convolutions are ORT's (Conv with the model's pads)."""
    inits, qi = _inits(model), _inits(q)
    sx, zx = float(qi["x_scale"]), float(qi["x_zero_point"])
    sw = qi[next(n for n in _dq_nodes(q) if n.input[0].startswith("w_")).input[1]].astype(np.float64)
    sb = qi[next(n for n in _dq_nodes(q) if n.input[0].startswith("b_")).input[1]].astype(np.float64)
    qt = QTYPES[qi["x_zero_point"].dtype.name]
    x_hat = (np.clip(np.rint(x / np.float32(sx)) + zx, qt.qmin, qt.qmax) - zx) * sx
    w = inits["w"]

    def conv(inp, weight):
        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
        m = _model([node], [_vi("x", list(inp.shape))], [_vi("y", None)], {"w": weight.astype(np.float32)})
        return _run(m, {"x": inp.astype(np.float32)})[0].astype(np.float64)

    per_channel = (-1, 1, 1)
    bound = conv(np.abs(x_hat), np.ones_like(w)) * (sw.reshape(per_channel) / 2)  # sw: one scale or one per channel
    bound += conv(np.ones_like(x), np.abs(w)) * (sx / 2) + sb.reshape(per_channel) / 2 + float(qi["y_scale"]) / 2
    (ref,) = _run(model, {"x": x})
    return bound + 1e-5 * np.abs(ref).max()


def test_conv_weights_are_per_channel_on_axis_0_and_bias_is_int32_with_scale_sx_sw():
    model = _conv_relu_model()
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    _, result = _quantize(model, {"x": x})
    q = result.model
    inits = _inits(q)
    w_dq = next(n for n in _dq_nodes(q) if n.input[0].startswith("w_"))
    assert helper.get_attribute_value(w_dq.attribute[0]) == 0  # axis 0 for Conv
    w_scale = inits[w_dq.input[1]]
    assert w_scale.shape == (8,)
    w = _inits(model)["w"]
    # symmetric int8 uses the levels [-127, 127] as ORT does: scale = max|w| per channel / 127
    # (within float32 rounding)
    np.testing.assert_allclose(w_scale, np.abs(w).reshape(8, -1).max(1) / 127, rtol=1e-6)
    x_scale = inits["x_scale"]
    b_dq = next(n for n in _dq_nodes(q) if n.input[0].startswith("b_"))
    assert inits[b_dq.input[0]].dtype == np.int32
    np.testing.assert_allclose(inits[b_dq.input[1]], x_scale * w_scale, rtol=1e-6)
    np.testing.assert_array_equal(inits[b_dq.input[0]], np.rint(_inits(model)["b"] / (x_scale * w_scale)))


def test_relu_is_folded_into_the_conv_output_range_with_zero_point_at_qmin():
    model = _conv_relu_model()
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    plan, result = _quantize(model, {"x": x})
    ops = [n.op_type for n in result.model.graph.node]
    assert "Relu" not in ops
    assert plan.folded
    assert _inits(result.model)["y_zero_point"] == 0  # uint8 qmin: the Q's saturation is the Relu
    # and the function is kept up to quantization error: outputs are non-negative and close to float
    (ref,) = _run(model, {"x": x})
    (got,) = _run(result.model, {"x": x})
    assert got.min() >= 0
    assert (np.abs(got - ref) <= _conv_relu_error_bound(model, result.model, x)).all()


def test_relu_is_kept_with_symmetric_activations():
    model = _conv_relu_model()
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    _, result = _quantize(model, {"x": x}, QDQConfig(activation_type="int8", symmetric_activations=True))
    assert "Relu" in [n.op_type for n in result.model.graph.node]


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_weights_use_axis_1(group):
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=group)
    model = _model([node], [_vi("x", [1, 4, 5, 5])], [_vi("y", [1, 3 * group, 7, 7])], {"w": w})
    _, result = _quantize(model, {"x": RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)})
    w_dq = next(n for n in _dq_nodes(result.model) if n.input[0].startswith("w_"))
    assert helper.get_attribute_value(w_dq.attribute[0]) == 1
    assert _inits(result.model)[w_dq.input[1]].shape == (3,)


@pytest.mark.parametrize("trans_b, w_shape, axis", [(0, (6, 5), 1), (1, (5, 6), 0)])
def test_gemm_weight_axis_follows_transB(trans_b, w_shape, axis):
    w = RNG.standard_normal(w_shape).astype(np.float32)
    b = RNG.standard_normal(5).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b)
    model = _model([node], [_vi("x", [2, 6])], [_vi("y", [2, 5])], {"w": w, "b": b})
    _, result = _quantize(model, {"x": RNG.standard_normal((2, 6)).astype(np.float32)})
    w_dq = next(n for n in _dq_nodes(result.model) if n.input[0].startswith("w_"))
    assert helper.get_attribute_value(w_dq.attribute[0]) == axis
    assert _inits(result.model)[w_dq.input[1]].shape == (5,)


def test_matmul_weight_is_quantized_on_the_last_axis():
    w = RNG.standard_normal((6, 7)).astype(np.float32)
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_vi("x", [2, 3, 6])],
        [_vi("y", [2, 3, 7])],
        {"w": w},
    )
    _, result = _quantize(model, {"x": RNG.standard_normal((2, 3, 6)).astype(np.float32)})
    w_dq = next(n for n in _dq_nodes(result.model) if n.input[0].startswith("w_"))
    assert helper.get_attribute_value(w_dq.attribute[0]) == 1
    assert _inits(result.model)[w_dq.input[1]].shape == (7,)


def test_per_tensor_weights_have_a_scalar_scale_and_no_axis():
    model = _conv_relu_model()
    _, result = _quantize(
        model, {"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)}, QDQConfig(per_channel=False)
    )
    w_dq = next(n for n in _dq_nodes(result.model) if n.input[0].startswith("w_"))
    assert not w_dq.attribute
    assert _inits(result.model)[w_dq.input[1]].shape == ()


def _concat_model():
    w1 = RNG.standard_normal((3, 2, 1, 1)).astype(np.float32)
    w2 = 10 * RNG.standard_normal((3, 2, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Conv", ["x", "w2"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["y"]),
    ]
    return _model(
        nodes,
        [_vi("x", [1, 2, 4, 4])],
        [_vi("y", [1, 24])],
        {"w1": w1, "w2": w2, "shape": np.array([1, 24], np.int64)},
    )


def test_concat_inputs_output_and_data_movement_share_one_scale():
    model = _concat_model()
    plan, result = _quantize(model, {"x": RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)})
    inits = _inits(result.model)
    scales = {t: float(inits[f"{t}_scale"]) for t in ("a", "b", "c", "p", "y")}
    assert len(set(scales.values())) == 1, scales
    assert len({plan.groups[t] for t in ("a", "b", "c", "p", "y")}) == 1


def test_exclusions_by_node_name_and_op_type_leave_nodes_in_float():
    model = _concat_model()
    x = {"x": RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)}
    conv_name = next(n.name for n in model.graph.node if n.input[1] == "w2")
    plan, result = _quantize(model, x, QDQConfig(exclude_nodes=(conv_name,)))
    assert plan.skipped[conv_name] == "excluded by name" and conv_name not in plan.nodes
    assert not any(n.input[0].startswith("w2") for n in _dq_nodes(result.model))
    assert any(n.input[0].startswith("w1") for n in _dq_nodes(result.model))
    plan, result = _quantize(model, x, QDQConfig(exclude_op_types=("Conv",)))
    assert all(v == "excluded by op type" for k, v in plan.skipped.items() if k.startswith("Conv"))
    assert not any(n.input[0].startswith("w1") for n in _dq_nodes(result.model))


def _residual_model():
    w1 = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)
    w2 = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "r"], ["y"]),
    ]
    return _model(nodes, [_vi("x", [1, 4, 5, 5])], [_vi("y", [1, 4, 5, 5])], {"w1": w1, "w2": w2})


def test_tensorrt_target_is_symmetric_int8_on_inputs_with_qdq_on_the_residual_shortcut_only():
    model = _residual_model()
    cfg = QDQConfig(target="tensorrt", activation_type="int8")
    plan, result = _quantize(model, {"x": RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)}, cfg)
    inits = _inits(result.model)
    for t in plan.tensors:
        assert inits[f"{t}_zero_point"] == 0 and inits[f"{t}_zero_point"].dtype == np.int8
    assert "r" in plan.tensors and "c" not in plan.tensors  # shortcut quantized, conv branch left to fuse
    assert "y" not in plan.tensors  # Q/DQ on op inputs only
    assert "Relu" in [n.op_type for n in result.model.graph.node]


def test_tensorrt_target_refuses_asymmetric_or_uint8():
    with pytest.raises(ConfigError):
        QDQConfig(target="tensorrt", activation_type="uint8")
    with pytest.raises(ConfigError):
        QDQConfig(target="tensorrt", activation_type="int8", symmetric_activations=False)


@pytest.mark.parametrize("wtype", ["int8", "uint8", "int4", "uint4", "int16"])
def test_every_weight_type_gives_a_model_ort_runs_close_to_float(wtype):
    model = _conv_relu_model()
    model.opset_import[0].version = 21
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    _, result = _quantize(model, {"x": x}, QDQConfig(weight_type=wtype))
    w_init = next(t for t in result.model.graph.initializer if t.name.startswith("w_") and "quantized" in t.name)
    assert w_init.data_type == QTYPES[wtype].onnx_type
    (ref,) = _run(model, {"x": x})
    (got,) = _run(result.model, {"x": x})
    assert (np.abs(got - ref) <= _conv_relu_error_bound(model, result.model, x)).all()


@pytest.mark.parametrize("atype", ["uint16", "int16"])
def test_16_bit_activations_are_more_accurate_than_8_bit(atype):
    model = _conv_relu_model()
    model.opset_import[0].version = 21
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    (ref,) = _run(model, {"x": x})
    errs = {}
    for a in ("uint8", atype):
        _, result = _quantize(model, {"x": x}, QDQConfig(activation_type=a, weight_type="int16"))
        (got,) = _run(result.model, {"x": x})
        errs[a] = np.abs(got - ref).max()
    assert errs[atype] < errs["uint8"] / 10


def test_apply_qdq_does_not_mutate_its_input():
    model = _conv_relu_model()
    before = model.SerializeToString()
    _quantize(model, {"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)})
    assert model.SerializeToString() == before


def test_per_tensor_bias_has_a_scalar_scale_and_no_axis_so_opset_10_accepts_it():
    model = _conv_relu_model()
    model.opset_import[0].version = 10
    _, result = _quantize(
        model, {"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)}, QDQConfig(per_channel=False)
    )
    b_dq = next(n for n in _dq_nodes(result.model) if n.input[0].startswith("b_"))
    assert not b_dq.attribute and _inits(result.model)[b_dq.input[1]].shape == ()


# --- leaving float the layers that border a float op ------------------------------------------------


def _hardswish_chain() -> onnx.ModelProto:
    """x -> c1 -> HardSwish -> c2 -> Relu -> c3 -> GlobalAveragePool -> Flatten -> Gemm: HardSwish has no
    rule on the ort target, so it stays float between c1 and c2."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w3"),
        numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "wf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["a"], ["h"], name="hs"),
        helper.make_node("Conv", ["h", "w2"], ["b"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w3"], ["c"], name="c3"),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "hs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_float_boundary_nodes_are_the_convs_next_to_a_float_op():
    from onnxq.passes.placement import float_boundary_nodes

    model = _hardswish_chain()
    plan = plan_qdq(model, QDQConfig())
    assert "hs" not in plan.nodes and {"c1", "c2", "c3", "gap"} <= set(plan.nodes) and "relu" in plan.folded
    # c3 reads the Relu folded into c2 (quantized) and feeds the GlobalAveragePool: not a boundary
    assert float_boundary_nodes(model, plan) == ["c1", "c2"]
    # a Shape reading c3's output reads no values, so it does not make c3 a boundary
    model.graph.node.append(helper.make_node("Shape", ["c"], ["c_shape"], name="shape_of_c3"))
    assert float_boundary_nodes(model, plan_qdq(model, QDQConfig())) == ["c1", "c2"]


def test_quantize_with_avoid_float_boundaries_leaves_those_convs_float(tmp_path):
    from onnxq.quantize.driver import quantize
    from onnxq.quantize.recipe import QuantizeRecipe

    src = tmp_path / "m.onnx"
    model = _hardswish_chain()
    model.ir_version = 14  # what onnx >= 1.23 writes and ORT 1.31 cannot read: onnxq lowers it for its runs
    onnx.save(model, src)
    x = np.random.default_rng(4).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    summary = quantize(src, tmp_path / "q.onnx", tmp_path / "calib.npy", QuantizeRecipe(avoid_float_boundaries=True))
    entry = next(p for p in summary.passes if p["pass"] == "plan")
    assert entry["nodes_left_float"] == 2 and entry["float_boundary_nodes"] == ["c1", "c2"]
    q = onnx.load(tmp_path / "q.onnx")
    assert q.ir_version <= 13
    conv_weights = {n.input[1] for n in q.graph.node if n.op_type == "Conv"}
    dq_outputs = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    assert sum(w in dq_outputs for w in conv_weights) == 1  # only c3's weight is quantized
    plain = quantize(src, tmp_path / "p.onnx", tmp_path / "calib.npy", QuantizeRecipe())
    assert not any("float_boundary_nodes" in p for p in plain.passes)
    assert plain.op_counts["Conv"] == 3 and summary.op_counts["Conv"] == 1


def test_average_pool_with_dilations_stays_float_because_ort_has_no_such_integer_kernel(tmp_path):
    # ORT fuses DQ -> AveragePool -> Q into QLinearAveragePool with the node's attributes, then refuses the model
    # ("Unrecognized attribute: dilations"): the placement leaves such a pool in float, and the Conv is quantized
    from onnxq.quantize.driver import quantize

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w")
    pool = helper.make_node("AveragePool", ["c"], ["y"], name="pool", kernel_shape=[2, 2], dilations=[2, 2])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), pool]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 5, 5])], [w])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9), tmp_path / "m.onnx")
    calib = {"x": rng.standard_normal((4, 1, 9, 9)).astype(np.float32)}
    summary = quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", calib)
    assert summary.op_counts == {"Conv": 1}
    assert "'dilations' attribute" in summary.skipped["pool"]
    out = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, calib)[0]
    assert out.shape == (4, 2, 5, 5)


def test_a_shared_scale_covers_the_union_of_its_members_ranges():
    """Concat's inputs (one ten times wider than the other), its output and the data movement after it share one
    scale: uint8 asymmetric over the union of their float ranges, [min(lo, 0), max(hi, 0)] / 255."""
    model = _concat_model()
    feeds = {"x": np.random.default_rng(31).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    plan, result = _quantize(model, feeds)
    ranges = _ranges_from_run(model, plan, feeds)  # exact min/max of each tensor in the float model
    members = ("a", "b", "c", "p", "y")
    lo, hi = min(0.0, *(ranges[t][0] for t in members)), max(0.0, *(ranges[t][1] for t in members))
    inits = _inits(result.model)
    for t in members:  # float64 scale rounded once to float32, as ORT's quantizer does: exact
        assert float(inits[f"{t}_scale"]) == float(np.float32((hi - lo) / 255)), t
        assert int(inits[f"{t}_zero_point"]) == int(np.rint(-lo / ((hi - lo) / 255)))  # 0 maps exactly to it
