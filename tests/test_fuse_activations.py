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
