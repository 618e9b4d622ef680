"""``onnxq lint``: QDQ models from onnxq and from ORT's quantizer against TensorRT's and ORT's rules.

The models are made here: onnxq's own output (``--target tensorrt`` and the default ``ort``), ORT's
``quantize_static`` QDQ output (U8S8 and S8S8), and hand-broken copies, each broken in one way, which must be
flagged by the rule for that way and by the node's name. Expected sets of nodes are computed from the model
independently of the lint (every uint8 QuantizeLinear, every non-zero zero point), so a rule that misses or
over-reports one fails.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REPO, SAMPLE_MODELS, SHARED_MODELS, json_schema_validator
from onnxq.cli import main
from onnxq.errors import ConfigError, NotQuantizedError
from onnxq.lint import RULESETS, lint_file, lint_model
from onnxq.lint.render import SCHEMA_ID, report_to_json
from onnxq.lint.rules import SEVERITIES
from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe
from onnxq.quantize.targets import TARGETS
from onnxq.runtime.cpu_int8 import u8s8_saturates

SCHEMA_PATH = REPO / "onnxq" / "report" / "schemas" / "lint.schema.json"
SQUEEZENET = SHARED_MODELS / "squeezenet1.1"
RESNET = SAMPLE_MODELS / "resnet_digits.onnx"
CALIB = SAMPLE_MODELS / "calib.npz"


# --- making the models ---------------------------------------------------------------------------------


def _ort_quantize(src: Path, out: Path, name: str, samples: np.ndarray, *, s8s8: bool) -> Path:
    """ORT's own static QDQ quantizer, per channel; the model upgraded to opset 13 first when older."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(src)
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        model = onnx.version_converter.convert_version(model, 13)
        model.ir_version = max(model.ir_version, 7)
    upgraded = out.with_suffix(".float.onnx")
    onnx.save(model, upgraded)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            self.i += 1
            return {name: samples[self.i - 1 : self.i]} if self.i <= len(samples) else None

    act = QuantType.QInt8 if s8s8 else QuantType.QUInt8
    quantize_static(upgraded, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=act,
                    weight_type=QuantType.QInt8)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> dict[str, Path]:
    """The residual sample CNN: onnxq's ort and tensorrt outputs, ORT's U8S8 and S8S8 outputs."""
    tmp = tmp_path_factory.mktemp("resnet")
    quantize(RESNET, tmp / "onnxq_ort.onnx", CALIB)
    quantize(RESNET, tmp / "onnxq_trt.onnx", CALIB, QuantizeRecipe(target="tensorrt"))
    samples = np.load(CALIB)["input"][:32]
    return {
        "onnxq_ort": tmp / "onnxq_ort.onnx",
        "onnxq_trt": tmp / "onnxq_trt.onnx",
        "ort_u8s8": _ort_quantize(RESNET, tmp / "ort_u8s8.onnx", "input", samples, s8s8=False),
        "ort_s8s8": _ort_quantize(RESNET, tmp / "ort_s8s8.onnx", "input", samples, s8s8=True),
    }


@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory) -> dict[str, Path]:
    """squeezenet1.1 (../shared/models): the same four models; skips when the shared models are absent."""
    src, calib = SQUEEZENET / "model.onnx", SQUEEZENET / "real_inputs" / "inputs.npy"
    if not src.exists():
        pytest.skip("../shared/models/squeezenet1.1 is absent")
    tmp = tmp_path_factory.mktemp("squeezenet")
    quantize(src, tmp / "onnxq_ort.onnx", calib)
    quantize(src, tmp / "onnxq_trt.onnx", calib, QuantizeRecipe(target="tensorrt"))
    samples = np.load(calib)
    return {
        "onnxq_ort": tmp / "onnxq_ort.onnx",
        "onnxq_trt": tmp / "onnxq_trt.onnx",
        "ort_u8s8": _ort_quantize(src, tmp / "ort_u8s8.onnx", "data_0", samples, s8s8=False),
        "ort_s8s8": _ort_quantize(src, tmp / "ort_s8s8.onnx", "data_0", samples, s8s8=True),
    }


def _nodes(report, rule: str) -> list[str]:
    return [v.node for v in report.violations if v.rule == rule]


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    (tensor,) = [t for t in model.graph.initializer if t.name == name]
    tensor.CopyFrom(numpy_helper.from_array(value, name))


def _activation_quantizers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear"]


# --- onnxq's own output passes, on both targets ------------------------------------------------------------


def test_onnxq_tensorrt_output_of_squeezenet_passes_the_tensorrt_lint(squeezenet):
    report = lint_file(squeezenet["onnxq_trt"], "tensorrt")
    assert report.passed and report.errors == 0
    assert report.by_rule() == {}  # its biases are float: TensorRT's parser refuses an int32 DequantizeLinear
    assert main(["lint", str(squeezenet["onnxq_trt"]), "--target", "tensorrt"]) == 0


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenetv2_digits", "transformer_digits", "mlp_digits"])
def test_onnxq_tensorrt_output_of_each_sample_model_passes_the_tensorrt_lint(name, tmp_path):
    out = tmp_path / "q.onnx"
    quantize(SAMPLE_MODELS / f"{name}.onnx", out, CALIB, QuantizeRecipe(target="tensorrt"))
    report = lint_file(out, "tensorrt")
    assert report.errors == 0, report.violations
    assert not any(t.data_type == TensorProto.INT32 for t in onnx.load(out).graph.initializer)
    assert "trt-int32-bias" not in report.by_rule()


def test_ort_lint_passes_onnxq_default_and_ort_u8s8_output_of_squeezenet_with_no_warning(squeezenet):
    for key in ("onnxq_ort", "ort_u8s8"):
        report = lint_file(squeezenet[key], "ort")
        assert report.passed and report.violations == (), (key, report.violations)


def test_ort_lint_passes_onnxq_default_and_ort_u8s8_output_of_the_sample_resnet(resnet):
    for key in ("onnxq_ort", "ort_u8s8"):
        assert lint_file(resnet[key], "ort").errors == 0


def test_a_model_the_ort_lint_passes_cleanly_has_no_float_conv_after_ort_fuses_it(squeezenet, tmp_path):
    """The lint's view of ORT's fusion against ORT's own: every Conv of the clean model becomes a QLinearConv."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    ort.InferenceSession(str(squeezenet["onnxq_ort"]), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") == 26


# --- what the lint finds on the others ----------------------------------------------------------------------


def test_tensorrt_lint_names_every_uint8_activation_of_onnxq_default_output(squeezenet):
    model = onnx.load(squeezenet["onnxq_ort"])
    inits = _inits(model)
    quantizers = _activation_quantizers(model)
    assert quantizers and all(inits[n.input[2]].dtype == np.uint8 for n in quantizers)
    asymmetric = [n.name for n in quantizers if inits[n.input[2]].any()]
    report = lint_file(squeezenet["onnxq_ort"], "tensorrt")
    assert not report.passed
    # all 42 activations, and the weights where they are uint8 too (this CPU's kernels saturate uint8 x int8),
    # by name, once each
    weights = [n.name for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.uint8]  # fmt: skip
    assert bool(weights) == u8s8_saturates()
    named = _nodes(report, "trt-int8")
    assert len(named) == len(set(named)) and sorted(named) == sorted([n.name for n in quantizers] + weights)
    assert asymmetric == ["data_0_QuantizeLinear"]  # zero point 114; uint8 weights' is 128
    assert sorted(_nodes(report, "trt-zero-point")) == sorted(asymmetric + weights)
    assert main(["lint", str(squeezenet["onnxq_ort"]), "--target", "tensorrt"]) == 1


def test_tensorrt_lint_names_the_asymmetric_int8_zero_points_of_ort_s8s8_output(squeezenet):
    """ORT's S8S8 output is int8 but asymmetric (ActivationSymmetric is off by default): those zero points are
    its only errors; its Softmax has a Q/DQ pair only for itself, and its 26 biases are int32."""
    model = onnx.load(squeezenet["ort_s8s8"])
    inits = _inits(model)
    asymmetric = [n.name for n in _activation_quantizers(model) if inits[n.input[2]].any()]
    report = lint_file(squeezenet["ort_s8s8"], "tensorrt")
    assert _nodes(report, "trt-zero-point") == asymmetric and len(asymmetric) > 40
    assert report.by_rule() == {"trt-zero-point": len(asymmetric), "trt-float-op": 1, "trt-int32-bias": 26}
    assert _nodes(report, "trt-float-op") == ["Softmax_softmaxout_1_intermediate"]


def test_tensorrt_lint_of_ort_s8s8_output_of_the_sample_resnet_finds_zero_points_and_int32_biases(resnet):
    report = lint_file(resnet["ort_s8s8"], "tensorrt")
    errors = {v.rule for v in report.violations if v.severity == "error"}
    assert errors == {"trt-zero-point", "trt-int32-bias"}
    biases = [n for n in onnx.load(resnet["ort_s8s8"]).graph.node if n.op_type in ("Conv", "Gemm")]
    assert report.by_rule()["trt-int32-bias"] == len(biases)  # every Conv and the Gemm have a bias
    inits = _inits(onnx.load(resnet["ort_s8s8"]))
    assert all(inits[q.input[2]].dtype == np.int8 for q in _activation_quantizers(onnx.load(resnet["ort_s8s8"])))


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="int8 QDQ fusion differs on ARM")
def test_ort_lint_warns_int8_activation_convs_that_ort_leaves_in_float_on_x86(squeezenet, tmp_path):
    import onnxruntime as ort

    report = lint_file(squeezenet["ort_s8s8"], "ort")
    assert report.errors == 0 and set(report.by_rule()) == {"ort-type-combo"}
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    ort.InferenceSession(str(squeezenet["ort_s8s8"]), so, providers=["CPUExecutionProvider"])
    float_convs = [n for n in onnx.load(so.optimized_model_filepath).graph.node if n.op_type in ("Conv", "FusedConv")]
    assert len(float_convs) >= 20 and len(_nodes(report, "ort-type-combo")) >= len(float_convs)


# --- hand-broken models: each flagged by its rule and node ----------------------------------------------------


def _first_bias_dq(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """The first Conv with an int32 bias DequantizeLinear, and that DequantizeLinear."""
    by_output = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2)
    return conv, by_output[conv.input[2]]


def test_a_bias_scale_other_than_sx_times_sw_is_an_ort_error_naming_the_bias(resnet, tmp_path):
    model = onnx.load(resnet["onnxq_ort"])
    _, bias_dq = _first_bias_dq(model)
    _set_init(model, bias_dq.input[1], _inits(model)[bias_dq.input[1]] * 2)
    report = lint_model(model, "ort")
    assert [(v.rule, v.node, v.severity) for v in report.violations] == [("ort-bias-scale", bias_dq.name, "error")]
    assert "off by 1" in report.violations[0].message
    onnx.save(model, tmp_path / "broken.onnx")
    assert main(["lint", str(tmp_path / "broken.onnx"), "--target", "ort"]) == 1


def test_a_bias_scale_within_float32_rounding_of_sx_times_sw_passes(resnet):
    model = onnx.load(resnet["onnxq_ort"])
    _, bias_dq = _first_bias_dq(model)
    scale = _inits(model)[bias_dq.input[1]]
    _set_init(model, bias_dq.input[1], np.nextafter(scale, np.float32(1)))  # one ulp up: a tool's rounding
    assert lint_model(model, "ort").violations == ()


def _first_activation_pair(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    q = _activation_quantizers(model)[1]  # after the stem: a Conv's output
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    return q, dq


@pytest.mark.parametrize("target", ["tensorrt", "ort"])
def test_a_per_channel_activation_is_an_error_on_both_targets(resnet, target):
    model = onnx.load(resnet["onnxq_trt" if target == "tensorrt" else "onnxq_ort"])
    q, dq = _first_activation_pair(model)
    inits = _inits(model)
    channels = 8
    scale, zp = inits[q.input[1]], inits[q.input[2]]
    for node in (q, dq):  # new per-channel scale and zero point, axis 1 (the activation's channels)
        node.input[1], node.input[2] = "pc_scale", "pc_zero_point"
        node.attribute.append(helper.make_attribute("axis", 1))
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.full(channels, scale, np.float32), "pc_scale"),
            numpy_helper.from_array(np.full(channels, zp, zp.dtype), "pc_zero_point"),
        ]
    )
    report = lint_model(model, target)
    assert _nodes(report, "qdq-per-tensor-activation") == [q.name] and not report.passed


def test_a_uint8_zero_point_is_a_tensorrt_error_on_that_node(resnet):
    model = onnx.load(resnet["onnxq_trt"])
    q, _ = _first_activation_pair(model)
    _set_init(model, q.input[2], np.array(0, np.uint8))  # the pair shares it: both now uint8
    report = lint_model(model, "tensorrt")
    assert [(v.rule, v.node) for v in report.violations if v.severity == "error"] == [("trt-int8", q.name)]
    _set_init(model, q.input[2], np.array(5, np.int8))
    report = lint_model(model, "tensorrt")
    assert [(v.rule, v.node) for v in report.violations if v.severity == "error"] == [("trt-zero-point", q.name)]


def test_a_qdq_pair_between_conv_and_relu_is_flagged_on_tensorrt(resnet):
    """onnxq's TensorRT output is Conv -> Relu -> Q -> DQ; moving the pair before the Relu stops the fusion."""
    model = onnx.load(resnet["onnxq_trt"])
    g = model.graph
    relu = next(n for n in g.node if n.op_type == "Relu")
    (q,) = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == relu.output[0]]
    (dq,) = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]
    readers = [n for n in g.node if dq.output[0] in n.input]
    q.input[0] = relu.input[0]  # Conv -> Q -> DQ -> Relu -> the DQ's old readers
    relu.input[0], relu.output[0] = dq.output[0], relu.output[0] + "_moved"
    for n in readers:
        n.input[:] = [relu.output[0] if name == dq.output[0] else name for name in n.input]
    nodes = _toposorted(list(g.node), {i.name for i in g.input} | {t.name for t in g.initializer})
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    report = lint_model(model, "tensorrt")
    assert _nodes(report, "trt-activation-fusion") == [q.name] and report.errors == 0


def _toposorted(nodes: list[onnx.NodeProto], known: set[str]) -> list[onnx.NodeProto]:
    out, pending = [], list(nodes)
    while pending:
        ready = next(n for n in pending if all(not i or i in known for i in n.input))
        pending.remove(ready)
        out.append(ready)
        known.update(ready.output)
    return out


def test_a_weight_quantized_on_the_wrong_axis_is_a_tensorrt_error(resnet):
    model = onnx.load(resnet["onnxq_trt"])
    by_output = {o: n for n in model.graph.node for o in n.output}
    inits = _inits(model)
    conv = next(
        n for n in model.graph.node if n.op_type == "Conv" and inits[by_output[n.input[1]].input[0]].shape[1] > 1
    )
    weight_dq = by_output[conv.input[1]]
    in_channels = inits[weight_dq.input[0]].shape[1]
    scale = float(inits[weight_dq.input[1]].mean())
    weight_dq.input[1], weight_dq.input[2] = "axis1_scale", "axis1_zero_point"  # one scale per *input* channel
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.full(in_channels, scale, np.float32), "axis1_scale"),
            numpy_helper.from_array(np.zeros(in_channels, np.int8), "axis1_zero_point"),
        ]
    )
    (axis,) = [a for a in weight_dq.attribute if a.name == "axis"]
    axis.i = 1
    report = lint_model(model, "tensorrt")
    errors = [(v.rule, v.node) for v in report.violations if v.severity == "error"]
    assert errors == [("trt-weight-axis", weight_dq.name)]
    assert "its output channels are axis 0" in report.violations[0].message


def test_a_dequantize_with_another_scale_than_its_quantize_and_a_zero_scale_are_errors(resnet):
    model = onnx.load(resnet["onnxq_ort"])
    q, dq = _first_activation_pair(model)
    dq.input[1] = "other_scale"
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "other_scale"))
    assert _nodes(lint_model(model, "ort"), "qdq-pair") == [dq.name]
    _set_init(model, "other_scale", np.array(0.0, np.float32))
    assert _nodes(lint_model(model, "ort"), "qdq-scale") == [dq.name]


def _residual_model(shortcut_op: str) -> onnx.ModelProto:
    """x -> Q/DQ -> Add(DQ, <shortcut_op>(x)): a residual Add with one quantized input."""
    zero = numpy_helper.from_array(np.array(0, np.int8), "zp")
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    other = (helper.make_node("Conv", ["x", "w"], ["o"], name="conv") if shortcut_op == "Conv"
             else helper.make_node(shortcut_op, ["x"], ["o"], name="act"))  # fmt: skip
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"), other,
             helper.make_node("Add", ["xd", "o"], ["y"], name="add")]  # fmt: skip
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "residual", [value("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [value("y", TensorProto.FLOAT, [1, 4, 4, 4])], [zero, scale, w])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_a_residual_add_whose_float_input_is_not_a_convolution_is_flagged_on_tensorrt():
    assert _nodes(lint_model(_residual_model("Sigmoid"), "tensorrt"), "trt-residual-add") == ["add"]
    assert _nodes(lint_model(_residual_model("Conv"), "tensorrt"), "trt-residual-add") == []  # Conv + Add fuse


# --- models from any tool: Constant-node scales, subgraphs, QOperator ----------------------------------------


def _scales_as_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    params = {i for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input[1:]}
    moved = [t for t in g.initializer if t.name in params]
    keep = [t for t in g.initializer if t.name not in params]
    del g.initializer[:]
    g.initializer.extend(keep)
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in moved]
    nodes = constants + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


@pytest.mark.parametrize("key", ["onnxq_ort", "ort_u8s8", "ort_s8s8"])
def test_constant_node_scales_give_the_same_findings_as_initializers(resnet, key):
    model = onnx.load(resnet[key])
    found = {}
    for target in ("ort", "tensorrt"):
        found[target] = lint_model(model, target).violations
        assert lint_model(_scales_as_constant_nodes(model), target).violations == found[target]
    assert found["tensorrt"]  # each model has findings on one target at least, so the comparison means something


def _if_model() -> onnx.ModelProto:
    """An If whose then-branch quantizes its input to uint8 (scale and zero point from the outer graph)."""
    value = helper.make_tensor_value_info
    then_nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["tq"], name="then_q"),
                  helper.make_node("DequantizeLinear", ["tq", "s", "zp"], ["t"], name="then_dq")]  # fmt: skip
    then_branch = helper.make_graph(then_nodes, "then", [], [value("t", TensorProto.FLOAT, [2])])
    else_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["e"], name="else_relu")], "else", [],
                                    [value("e", TensorProto.FLOAT, [2])])  # fmt: skip
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.uint8), "zp"),
    ]
    graph = helper.make_graph([node], "g", [value("c", TensorProto.BOOL, []), value("x", TensorProto.FLOAT, [2])],
                              [value("y", TensorProto.FLOAT, [2])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def test_qdq_inside_an_if_branch_is_linted_with_the_branch_as_its_graph(tmp_path):
    report = lint_model(_if_model(), "tensorrt")
    assert report.graphs == 3 and report.qdq_nodes == 2
    assert {(v.graph, v.node, v.rule) for v in report.violations} == {
        ("main/branch.then_branch", "then_q", "trt-int8"),
        ("main/branch.then_branch", "then_q", "trt-zero-point"),
    }
    onnx.save(_if_model(), tmp_path / "if.onnx")
    assert main(["lint", str(tmp_path / "if.onnx"), "--target", "ort"]) == 0


def test_ort_qoperator_output_is_a_tensorrt_error_on_each_qlinear_node(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    samples = np.load(CALIB)["input"][:8]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(samples)

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {"input": row[None]}

    quantize_static(RESNET, tmp_path / "qop.onnx", Reader(), quant_format=QuantFormat.QOperator)
    model = onnx.load(tmp_path / "qop.onnx")
    report = lint_model(model, "tensorrt")
    qlinear = [n.name for n in model.graph.node if n.op_type == "QLinearConv"]
    assert qlinear and set(qlinear) <= set(_nodes(report, "trt-qoperator"))


# --- the command line ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema_validator():
    return json_schema_validator(SCHEMA_PATH)


def test_cli_prints_a_table_and_a_summary_and_exits_0_on_a_pass(resnet, capsys):
    assert main(["lint", str(resnet["onnxq_trt"]), "--target", "tensorrt"]) == 0
    out = capsys.readouterr().out
    assert "violations: none" in out
    assert out.rstrip().splitlines()[-1].startswith("tensorrt: passed, 0 errors, 0 warnings in ")
    assert main(["lint", str(resnet["ort_s8s8"]), "--target", "ort"]) == 0  # a table of warnings, still a pass
    out = capsys.readouterr().out
    assert "node" in out and "fix" in out and "ort-type-combo" in out


def test_cli_exits_1_when_the_lint_finds_errors_and_the_json_says_why(resnet, capsys, schema_validator):
    assert main(["lint", str(resnet["onnxq_ort"]), "--target", "tensorrt", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    schema_validator.validate(doc)
    assert doc["schema"] == SCHEMA_ID == "onnxq.lint/1" and list(doc)[0] == "schema"
    assert doc["passed"] is False and doc["summary"]["errors"] == len([v for v in doc["violations"]
                                                                       if v["severity"] == "error"])  # fmt: skip
    assert {r["id"] for r in doc["rules"]} == {r.id for r in RULESETS["tensorrt"]}


def test_json_of_a_passing_model_validates(resnet, schema_validator):
    doc = report_to_json(lint_file(resnet["onnxq_trt"], "tensorrt"))
    schema_validator.validate(doc)
    assert doc["passed"] is True


@pytest.mark.parametrize(
    "args, says",
    [
        (["--target", "nope"], "'nope' is not one of"),
        ([], "needs --target"),
    ],
)
def test_cli_refuses_an_unknown_or_missing_target_with_error_and_hint(resnet, capsys, args, says):
    assert main(["lint", str(resnet["onnxq_trt"]), *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and says in err[0] and err[1].startswith("hint: ")


def test_cli_user_errors_exit_2_with_error_and_hint(tmp_path, capsys):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    cases = [
        (tmp_path / "missing.onnx", "no such file"),
        (tmp_path / "junk.onnx", "not an ONNX model"),
        (RESNET, "no QuantizeLinear/DequantizeLinear"),  # a float model: nothing to lint
    ]
    for path, says in cases:
        assert main(["lint", str(path), "--target", "ort"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("error: ") and says in err[0], err
        assert err[1].startswith("hint: ")


def test_a_float_model_raises_not_quantized_with_a_quantize_hint():
    with pytest.raises(NotQuantizedError) as info:
        lint_model(onnx.load(RESNET), "tensorrt")
    assert "onnxq quantize" in info.value.hint and "--target tensorrt" in info.value.hint


def test_an_unknown_target_is_a_config_error_before_the_model_is_read(tmp_path):
    with pytest.raises(ConfigError, match="unknown target"):
        lint_file(tmp_path / "never-read.onnx", "tensorflow")


def test_every_target_has_a_rule_set_of_unique_ids_and_known_severities():
    assert set(RULESETS) == set(TARGETS)
    for rules in RULESETS.values():
        ids = [r.id for r in rules]
        assert len(ids) == len(set(ids))
        assert all(r.severity in SEVERITIES and r.statement and r.fix for r in rules)
    assert RULESETS["cuda"] is RULESETS["tensorrt"]


def test_lint_help_states_the_exit_codes_and_that_cuda_uses_tensorrt_rules(capsys):
    assert main(["lint", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit code 0" in text and "1: the lint found errors" in text and "2: a user error" in text
    assert "cuda shares tensorrt's rules" in text
