"""Spelled-out hard-swish is fused into one HardSwish node, keeping the function."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SHARED_MODELS
from onnxq.passes.prepare import PrepareConfig, prepare_model


def _hard_swish_model(spelling: str, opset: int = 13):
    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("three", 3), ("zero", 0), ("six", 6))]
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"])]
    if spelling == "div_after_mul":
        nodes += [helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    else:
        nodes += [helper.make_node("Div", ["c", "six"], ["d"]), helper.make_node("Mul", ["d", "x"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 50])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 50])],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("spelling", ["div_after_mul", "mul_after_div"])
def test_hard_swish_spellings_become_one_node_with_the_same_outputs(spelling):
    model = _hard_swish_model(spelling)
    result = prepare_model(model)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["HardSwish"], ops
    assert result.details["hardswish_fused"] == 1 and result.details["opset_to"] == 14
    x = np.linspace(-8, 8, 100, dtype=np.float32).reshape(2, 50)
    # HardSwish computes x * clip(x/6 + 0.5, 0, 1): equal to the spelled-out form up to float rounding
    np.testing.assert_allclose(_run(result.model, x), _run(model, x), rtol=1e-6, atol=1e-6)


def test_a_shared_intermediate_blocks_the_fusion():
    model = _hard_swish_model("div_after_mul")
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 50]))
    result = prepare_model(model)
    assert "HardSwish" not in [n.op_type for n in result.model.graph.node]


def test_fusion_can_be_turned_off():
    result = prepare_model(_hard_swish_model("div_after_mul"), PrepareConfig(fuse_activations=False))
    assert "HardSwish" not in [n.op_type for n in result.model.graph.node]


def test_ppocr_hard_swish_blocks_are_fused():
    path = SHARED_MODELS / "ppocr_mobile_v2_cls" / "model.onnx"
    if not path.exists():
        pytest.skip("shared models not present")
    result = prepare_model(onnx.load(str(path)))
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("HardSwish") == 18 and "Div" not in ops


@pytest.mark.parametrize(
    "shape, folds", [((1, 3, 1, 1), True), ((3, 1, 1), True), ((1,), True), ((5, 1), False), ((1, 3, 5, 5), False)]
)
def test_per_channel_bias_add_after_conv_folds_into_the_conv_bias(shape, folds):
    rng = np.random.default_rng(0)
    c = rng.standard_normal(shape).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y0"], name="conv"),
        helper.make_node("Add", ["y0", "c"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 2, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
        numpy_helper.from_array(c, "c"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = prepare_model(model)
    ops = [n.op_type for n in result.model.graph.node]
    assert (ops == ["Conv"]) == folds, ops
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    # one extra float rounding of the bias sum: relative 1e-6
    np.testing.assert_allclose(_run(result.model, x), _run(model, x), rtol=1e-5, atol=1e-6)


def _conv_hard_swish_conv(const_shape: tuple[int, ...]) -> onnx.ModelProto:
    """Conv -> x * Clip(x + 3, 0, 6) / 6 -> Conv, with 3 and 6 stored at ``const_shape`` (exporters write [1])."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.full(const_shape, 3, np.float32), "three"),
        numpy_helper.from_array(np.full(const_shape, 6, np.float32), "six"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6, np.float32), "six_scalar"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["h", "three"], ["a"], name="add"),
        helper.make_node("Clip", ["a", "zero", "six_scalar"], ["c"], name="clip"),
        helper.make_node("Mul", ["h", "c"], ["m"], name="mul"),
        helper.make_node("Div", ["m", "six"], ["hs"], name="div"),
        helper.make_node("Conv", ["hs", "w2"], ["y"], name="conv2"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])
    graph = helper.make_graph(nodes, "hs", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("const_shape", [(), (1,), (1, 1, 1, 1)])
def test_hard_swish_with_one_element_constants_of_any_rank_fuses_and_quantizes(const_shape, tmp_path):
    from onnxq.quantize.driver import quantize

    model = _conv_hard_swish_conv(const_shape)
    onnx.save(model, tmp_path / "hs.onnx")
    calib = {"x": np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)}
    summary = quantize(tmp_path / "hs.onnx", tmp_path / "hs.qdq.onnx", calib)
    qmodel = onnx.load(tmp_path / "hs.qdq.onnx")
    ops = [n.op_type for n in qmodel.graph.node]
    assert ops.count("HardSwish") == 1 and "Div" not in ops and summary.op_counts.get("Conv") == 2, ops
    x = calib["x"][:2]
    got = ort.InferenceSession(qmodel.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == (2, 2, 8, 8) and got.dtype == np.float32


def test_hard_swish_of_a_scalar_with_shape_1_constants_is_not_fused():
    # x is rank 0: x * Clip(x + [3], 0, 6) / [6] has shape [1], which HardSwish(x) would not keep
    model = _hard_swish_model("div_after_mul", opset=14)
    for t in model.graph.initializer:
        if t.name in ("three", "six"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(1), t.name))
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, []))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1]))
    result = prepare_model(model)
    assert "HardSwish" not in [n.op_type for n in result.model.graph.node]
    x = np.array(1.5, np.float32)
    assert _run(result.model, x).shape == (1,)
