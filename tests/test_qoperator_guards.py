"""The QOperator conversion's refusals, each on a small graph built to need it: what stays QDQ stays QDQ with its
reason, and what is converted computes in ORT what the QDQ graph computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_qoperator import CALIB, SAMPLES, TEST, _clip_model, _run, _test_images

from onnxq.errors import PassError, QuantizationError
from onnxq.passes.qoperator import compare_formats, convert_to_qoperator
from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _grid_input(dtype=np.uint8) -> dict[str, np.ndarray]:
    info = np.iinfo(dtype)
    return {"xq": np.linspace(info.min, info.max, 256).astype(dtype)}


def test_a_move_between_two_zero_points_is_a_requantization():
    model = _clip_model(0.0, 6.0, 0.03, 10, np.uint8)
    model.graph.node[1].op_type = "Identity"
    del model.graph.node[1].input[1:]
    model.graph.initializer.append(numpy_helper.from_array(np.array(11, np.uint8), "z2"))
    model.graph.node[2].input[2] = "z2"  # same scale, zero point one step apart
    result = convert_to_qoperator(model)
    assert "different scales or zero points" in result.details["kept_qdq"]["clip"]


def _resize_model(mode: str) -> onnx.ModelProto:
    s, z = numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(3, np.uint8), "z")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x"]),
             helper.make_node("Resize", ["x", "", "scales"], ["r"], name="resize", mode=mode),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"])]  # fmt: skip
    io = ([helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 1, 4, 4])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])  # fmt: skip
    graph = helper.make_graph(nodes, "g", *io, [s, z, scales])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_an_interpolating_resize_stays_qdq_and_a_nearest_one_moves_integers():
    kept = convert_to_qoperator(_resize_model("linear"))
    assert kept.details["kept_qdq"] == {"resize": "Resize interpolates (mode is not nearest)"}
    nearest = _resize_model("nearest")
    moved = convert_to_qoperator(nearest)
    assert moved.details["converted"] == {"Resize -> Resize": 1}
    x = {"xq": np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4) * 15}
    assert np.array_equal(_ort(moved.model, x)[0], _ort(nearest, x)[0])


def test_an_op_whose_output_is_also_a_graph_output_keeps_that_output():
    model = _clip_model(0.5, 6.0, 0.03, 10, np.uint8)
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [256]))  # Clip's float output
    result = convert_to_qoperator(model)
    assert "clip" not in result.details["converted"] and [o.name for o in result.model.graph.output] == ["y", "c"]
    onnx.checker.check_model(result.model, full_check=True)
    got, want = _ort(result.model, _grid_input()), _ort(model, _grid_input())
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_a_blocked_weight_dequantize_has_no_qoperator_form():
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(8, 4)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.full((2, 4), 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.array(0.1, np.float32), "so")]  # fmt: skip
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0, block_size=4),
             helper.make_node("MatMul", ["xd", "w"], ["m"], name="mm"),
             helper.make_node("QuantizeLinear", ["m", "so", "z"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "so", "z"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    result = convert_to_qoperator(model)
    assert result.details["kept_qdq"] == {"mm": "input B is not dequantized from an integer tensor"}


def test_q_and_dq_without_a_zero_point_are_uint8():
    model = _clip_model(0.5, 6.0, 0.03, 0, np.uint8)
    for node in model.graph.node:
        del node.input[2:]  # no zero point: uint8, zero point 0, as the operators define
    converted = convert_to_qoperator(model).model
    assert [n.op_type for n in converted.graph.node if n.op_type == "Clip"] == ["Clip"]
    bounds = [numpy_helper.to_array(t) for t in converted.graph.initializer if t.name.endswith("_bound")]
    assert bounds and all(b.dtype == np.uint8 for b in bounds)
    assert np.array_equal(_ort(converted, _grid_input())[0], _ort(model, _grid_input())[0])


def test_a_gemm_with_alpha_stays_qdq(tmp_path):
    qdq_path = tmp_path / "mlp.onnx"
    quantize(SAMPLES / "mlp_digits.onnx", qdq_path, str(CALIB), QuantizeRecipe())
    model = onnx.load(qdq_path)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    for a in [a for a in gemm.attribute if a.name == "alpha"]:
        gemm.attribute.remove(a)
    gemm.attribute.append(helper.make_attribute("alpha", 0.5))
    result = convert_to_qoperator(model)
    assert result.details["kept_qdq"][gemm.name] == "alpha or beta is not 1"
    feeds = {model.graph.input[0].name: np.load(TEST)["input"][:20]}
    assert np.array_equal(_ort(result.model, feeds)[0], _ort(model, feeds)[0])


def test_convs_read_in_float_stay_qdq(tmp_path):
    # the tensorrt placement: Q/DQ on op inputs only, so no Conv output is quantized
    qdq_path = tmp_path / "trt.onnx"
    quantize(SAMPLES / "resnet_digits.onnx", qdq_path, str(CALIB), QuantizeRecipe(target="tensorrt"))
    qdq = onnx.load(qdq_path)
    result = convert_to_qoperator(qdq)
    assert result.details["kept_qdq"]["/stem/stem.0/Conv"] == "its output is not quantized (it is read in float)"
    x = _test_images(10)
    got, want = _run(result.model, x).astype(np.float64), _run(qdq, x).astype(np.float64)
    assert 10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2)) > 40  # ORT runs some of these QDQ in float


def test_the_pass_refuses_a_conversion_that_departs_when_verifying(tmp_path, monkeypatch):
    from onnxq.passes import qoperator

    def departing(a, b, feeds):
        return {"y": {"elements": 10, "different": 10, "max_abs_diff": 1.0, "not_finite": [0, 0], "sqnr_db": 12.0}}

    monkeypatch.setattr(qoperator, "compare_formats", departing)
    with pytest.raises(PassError, match="SQNR 12.0 dB < 40 dB"):
        quantize(SAMPLES / "mlp_digits.onnx", tmp_path / "q.onnx", str(CALIB), QuantizeRecipe(format="qoperator"),
                 verify=True)  # fmt: skip
    assert not (tmp_path / "q.onnx").exists()


def test_convert_refuses_non_finite_outputs_of_the_converted_model(tmp_path, monkeypatch):
    from onnxq.passes import qoperator
    from onnxq.quantize.convert import convert

    qdq_path = tmp_path / "mlp.onnx"
    quantize(SAMPLES / "mlp_digits.onnx", qdq_path, str(CALIB), QuantizeRecipe())

    def nan_out(a, b, feeds):
        return {"y": {"elements": 10, "different": 0, "max_abs_diff": 0.0, "not_finite": [0, 3], "sqnr_db": None}}

    monkeypatch.setattr(qoperator, "compare_formats", nan_out)
    with pytest.raises(QuantizationError, match="the converted model gives 3 NaN/Inf value"):
        convert(qdq_path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_nan_in_both_models_at_the_same_place_is_no_difference():
    nodes = [helper.make_node("Log", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    stats = compare_formats(model, model, [{"x": np.array([-1.0, 1.0, 2.0, -3.0], np.float32)}])["y"]
    assert stats["different"] == 0 and stats["not_finite"] == [2, 2] and stats["elements"] == 4
