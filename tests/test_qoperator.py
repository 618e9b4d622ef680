"""QOperator conversion (``--format qoperator``, ``onnxq convert``): what it rewrites, that the integers it
computes are the QDQ model's, and what it refuses.

The oracles are independent of the converter: ONNX Runtime running the QDQ model (its own QDQ fusion makes
the same integer ops, so its outputs must be bit-identical where it fuses), ORT with graph optimisation off
(DequantizeLinear -> float op -> QuantizeLinear, the QDQ model's definition) and ``onnx.reference``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.cli import main
from onnxq.errors import ConfigError, QuantizationError
from onnxq.passes.qoperator import QOperatorConfig, convert_to_qoperator
from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe
from onnxq.runtime.cpu_int8 import u8s8_saturates

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"
CALIB = SAMPLES / "calib.npz"
TEST = SAMPLES / "test.npz"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _run(model: onnx.ModelProto | Path, x: np.ndarray, *, optimize: bool = True) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _test_images(n: int = 200) -> np.ndarray:
    with np.load(TEST) as d:
        return d["input"][:n]


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{sample model: (its QDQ model, its --format qoperator model)}, made once for the module."""
    work = tmp_path_factory.mktemp("qop")
    out = {}
    for name in ("resnet_digits", "mobilenetv2_digits", "mlp_digits", "transformer_digits"):
        qdq, qop = work / f"{name}.qdq.onnx", work / f"{name}.qop.onnx"
        quantize(SAMPLES / f"{name}.onnx", qdq, str(CALIB), QuantizeRecipe())
        quantize(SAMPLES / f"{name}.onnx", qop, str(CALIB), QuantizeRecipe(format="qoperator"))
        out[name] = (qdq, qop)
    return out


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenetv2_digits", "mlp_digits", "transformer_digits"])
def test_qoperator_output_is_bit_identical_to_what_ort_computes_for_the_qdq_model(quantized, name):
    qdq, qop = quantized[name]
    x = _test_images()
    assert np.array_equal(_run(qop, x), _run(qdq, x))


def test_every_conv_and_gemm_of_the_cnns_becomes_an_integer_op(quantized):
    for name in ("resnet_digits", "mobilenetv2_digits"):
        qdq_ops, qop_ops = _ops(onnx.load(quantized[name][0])), _ops(onnx.load(quantized[name][1]))
        assert qop_ops["QLinearConv"] == qdq_ops["Conv"] > 0 and qop_ops["Conv"] == 0
        assert qop_ops["QGemm"] == qdq_ops["Gemm"] == 1 and qop_ops["QLinearAdd"] == qdq_ops["Add"]
        # what remains of QDQ: one QuantizeLinear at the input, no DequantizeLinear but for the float output
        assert qop_ops["QuantizeLinear"] == 1 and qop_ops["DequantizeLinear"] == 0


def test_transformer_matmuls_with_float_outputs_become_matmul_integer_to_float(quantized):
    qdq, qop = (onnx.load(p) for p in quantized["transformer_digits"])
    float_out_matmuls = sum(1 for n in qdq.graph.node if n.op_type == "MatMul")
    assert _ops(qop)["MatMulIntegerToFloat"] == float_out_matmuls > 0
    assert any(o.domain == "com.microsoft" for o in qop.opset_import)


def test_qoperator_model_keeps_the_qdq_definition_of_the_model(quantized):
    """Against the QDQ model run unfused (DQ -> float op -> Q, graph optimisation off): an integer kernel
    rounds its exact int32 sum once, the float path rounds a float32 sum, so a value on a rounding boundary
    may land one step off in a layer and carry on; measured 37 dB and 100% argmax agreement here."""
    qdq, qop = quantized["resnet_digits"]
    x = _test_images()
    exact, definition = _run(qop, x), _run(qdq, x, optimize=False)
    sqnr = 10 * np.log10(np.sum(definition**2) / np.sum((exact - definition) ** 2))
    assert sqnr >= 30 and (exact.argmax(1) == definition.argmax(1)).mean() >= 0.99


def _ort_qdq(model: Path, out: Path, symmetric_int8: bool) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            with np.load(CALIB) as d:
                self.batches = iter([{"input": d["input"][i : i + 1]} for i in range(32)])

        def get_next(self):
            return next(self.batches, None)

    act = QuantType.QInt8 if symmetric_int8 else QuantType.QUInt8
    quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=act, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": symmetric_int8})  # fmt: skip
    return out


@pytest.mark.parametrize("symmetric_int8", [False, True], ids=["u8s8", "s8s8"])
def test_convert_takes_ort_quantize_static_output_and_matches_it(tmp_path, capsys, symmetric_int8):
    qdq = _ort_qdq(SAMPLES / "resnet_digits.onnx", tmp_path / "ort.qdq.onnx", symmetric_int8)
    capsys.readouterr()
    code, out, err = _cli(capsys, "convert", qdq, "-o", tmp_path / "c.onnx", "--data", TEST, "--samples", 64, "--json")
    if symmetric_int8 and u8s8_saturates():  # ORT runs part of the s8s8 QDQ model unfused, hence exactly
        assert code == 2 and "saturate uint8 x int8" in err and not (tmp_path / "c.onnx").exists(), err
        return
    assert code == 0, err
    summary = json.loads(out)
    converted = onnx.load(tmp_path / "c.onnx")
    assert summary["converted"]["Conv -> QLinearConv"] == _ops(onnx.load(qdq))["Conv"] == _ops(converted)["QLinearConv"]
    x = _test_images()
    diff = np.abs(_run(converted, x) - _run(qdq, x))
    assert summary["check"]["bit_exact"] == (diff.max() == 0)
    assert diff.max() <= 0.05  # ORT leaves some s8s8 groups unfused in float: a rounding step at most


def _clip_model(lo: float, hi: float, scale: float, zp: int, dtype) -> onnx.ModelProto:
    """x_q -> DQ -> Clip(lo, hi) -> Q -> DQ -> y, input and output on one grid."""
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    values = {"s": np.array(scale, np.float32), "z": np.array(zp, dtype), "lo": np.array(lo, np.float32),
              "hi": np.array(hi, np.float32)}  # fmt: skip
    inits = [numpy_helper.from_array(v, name) for name, v in values.items()]
    nodes = [helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x"]),
             helper.make_node("Clip", ["x", "lo", "hi"], ["c"], name="clip"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", t, [256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize(("lo", "hi", "scale", "zp", "dtype"), [
    (0.5, 6.0, 0.03, 10, np.uint8), (-1.3, 2.2, 0.021, -5, np.int8), (0.0, 100.0, 0.05, 128, np.uint8),
    (-50.0, 0.7, 0.1, 0, np.int8),  # a bound beyond the grid saturates
])  # fmt: skip
def test_integer_clip_is_exactly_the_dequantize_clip_quantize_definition(lo, hi, scale, zp, dtype):
    from onnx.reference import ReferenceEvaluator

    model = _clip_model(lo, hi, scale, zp, dtype)
    converted = convert_to_qoperator(model).model
    assert _ops(converted)["Clip"] == 1 and _ops(converted)["DequantizeLinear"] == 1  # only the output's
    info = np.iinfo(dtype)
    xq = np.arange(info.min, info.max + 1).astype(dtype)
    expected = ReferenceEvaluator(model).run(None, {"xq": xq})[0]
    assert np.array_equal(_run(converted, xq), expected)


def test_groups_without_a_qoperator_form_stay_qdq_and_say_why(tmp_path):
    summary = quantize(SAMPLES / "resnet_digits.onnx", tmp_path / "u16.onnx", str(CALIB),
                       QuantizeRecipe(activation_type="uint16", format="qoperator"))  # fmt: skip
    entry = next(e for e in summary.passes if e["pass"] == "qoperator")
    kept = {name.rsplit("/", 1)[-1].rstrip("_0123456789"): why for name, why in entry["kept_qdq"].items()}
    assert kept["Conv"] == "the input is uint16: QOperator kernels take 8 bits"
    assert kept["MaxPool"] == "MaxPool has no uint16 kernel"
    assert entry["converted"] == {"Flatten -> Flatten": 1}  # moving uint16 values needs no kernel of its own
    summary = quantize(SAMPLES / "mlp_digits.onnx", tmp_path / "mlp.onnx", str(CALIB),
                       QuantizeRecipe(activation_type="uint16", format="qoperator"))  # fmt: skip
    assert any("--format qoperator converted nothing" in w for w in summary.warnings)
    model = _clip_model(0.0, 6.0, 0.03, 0, np.uint8)
    model.graph.node[1].op_type = "HardSwish"
    del model.graph.node[1].input[1:]
    result = convert_to_qoperator(model)
    assert not result.modified and result.details["kept_qdq"] == {
        "clip": "HardSwish has no QOperator form in ONNX Runtime"
    }


def test_a_different_grid_around_a_data_movement_op_is_not_taken_for_the_same(tmp_path):
    model = _clip_model(0.0, 6.0, 0.03, 0, np.uint8)
    model.graph.node[1].op_type = "Identity"
    del model.graph.node[1].input[1:]
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.031, np.float32), "s2"))
    model.graph.node[2].input[1] = "s2"
    result = convert_to_qoperator(model)
    assert "different scales" in result.details["kept_qdq"]["clip"]


def test_a_bias_whose_scale_is_not_sx_times_sw_keeps_its_conv_in_qdq(quantized):
    qdq = onnx.load(quantized["resnet_digits"][0])
    conv = next(n for n in qdq.graph.node if n.op_type == "Conv")
    producers = {o: n for n in qdq.graph.node for o in n.output}
    bias_scale = producers[conv.input[2]].input[1]
    tensor = next(t for t in qdq.graph.initializer if t.name == bias_scale)
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(1.01), bias_scale))
    result = convert_to_qoperator(qdq)
    assert result.details["kept_qdq"] == {conv.name: "the bias scale is not s_x * s_w, which QOperator kernels assume"}


def test_keep_op_types_is_checked_and_honoured(quantized):
    with pytest.raises(ConfigError, match="HardSwish"):
        QOperatorConfig(keep_op_types=("HardSwish",))
    result = convert_to_qoperator(onnx.load(quantized["resnet_digits"][0]), QOperatorConfig(keep_op_types=("Conv",)))
    assert "Conv -> QLinearConv" not in result.details["converted"]
    assert Counter(result.details["kept_qdq"].values())["kept by keep_op_types"] == 6


def test_convert_refuses_a_departing_conversion_and_writes_nothing(tmp_path, quantized, monkeypatch):
    from onnxq.passes import _qoperator_ops as ops

    def wrong_add(group, writer, consts):  # a careless builder: Mul where Add was
        node = ops.BUILDERS["Mul"](group, writer, consts)
        return node

    monkeypatch.setitem(ops.BUILDERS, "Add", wrong_add)
    out = tmp_path / "bad.onnx"
    from onnxq.quantize.convert import convert

    with pytest.raises(QuantizationError, match="departs from the QDQ model"):
        convert(quantized["resnet_digits"][0], out, data=str(TEST))
    assert not out.exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--format", "qoperator", "--target", "tensorrt"], "contradicts --target tensorrt"),
    (["--format", "qoperator", "--dynamic"], "contradicts --dynamic"),
    (["--format", "qlinear"], "qlinear"),
])  # fmt: skip
def test_quantize_refuses_a_format_the_recipe_cannot_have(tmp_path, capsys, args, needle):
    code, _, err = _cli(
        capsys, "quantize", SAMPLES / "mlp_digits.onnx", "-o", tmp_path / "o.onnx", "--calib", CALIB, *args
    )
    assert code == 2 and needle in err
    assert not (tmp_path / "o.onnx").exists()


def test_convert_refuses_a_float_model_and_its_own_output_path(tmp_path, capsys, quantized):
    code, _, err = _cli(capsys, "convert", SAMPLES / "mlp_digits.onnx", "-o", tmp_path / "o.onnx")
    lines = err.strip().splitlines()
    assert code == 2 and "not a QDQ model" in lines[0] and lines[1].startswith("hint:") and len(lines) == 2
    qdq = quantized["mlp_digits"][0]
    before = qdq.read_bytes()
    code, _, err = _cli(capsys, "convert", qdq, "-o", qdq)
    assert code == 2 and "never overwrites its input" in err and qdq.read_bytes() == before


def test_the_format_and_the_pass_name_select_each_other():
    assert QuantizeRecipe(format="qoperator").passes == ("qoperator",)
    assert QuantizeRecipe(passes=("qoperator",)).format == "qoperator"
    again = QuantizeRecipe.from_dict(QuantizeRecipe(format="qoperator").to_dict())
    assert again == QuantizeRecipe(format="qoperator")


def test_integer_type_combinations_without_an_ort_kernel_stay_qdq(quantized):
    """int8 input, uint8 output: ORT's QLinearConv kernels are u8/s8 -> u8, u8/u8 -> u8 and s8/s8 -> s8."""
    qdq = onnx.load(quantized["resnet_digits"][0])
    zp = next(t for t in qdq.graph.initializer if t.name == "input_zero_point")
    zp.CopyFrom(numpy_helper.from_array(np.array(0, np.int8), zp.name))  # the input's Q and DQ now int8
    result = convert_to_qoperator(qdq)
    first_conv = next(n.name for n in qdq.graph.node if n.op_type == "Conv")
    clash = "uint8 weights" if u8s8_saturates() else "uint8 outputs"  # the sample's weights: uint8 here, else int8
    assert result.details["kept_qdq"] == {first_conv: f"ORT has no kernel for int8 inputs with {clash}"}
    x = _test_images(50)
    assert np.array_equal(_run(result.model, x), _run(qdq, x))


def test_weight_scales_along_the_input_channels_keep_the_conv_in_qdq(quantized):
    """QLinearConv takes one weight scale per output channel (axis 0); scales along axis 1 mean another weight."""
    qdq = onnx.load(quantized["resnet_digits"][0])
    inits = {t.name: t for t in qdq.graph.initializer}
    producers = {o: n for n in qdq.graph.node for o in n.output}
    for conv in (n for n in qdq.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[1]]
        dims = inits[dq.input[0]].dims
        if dims[0] == dims[1] and numpy_helper.to_array(inits[dq.input[1]]).size == dims[0]:
            break
    else:
        pytest.fail("no Conv with as many input as output channels in the sample")
    del dq.attribute[:]
    dq.attribute.append(helper.make_attribute("axis", 1))
    onnx.checker.check_model(qdq, full_check=True)  # a valid QDQ model, whose weight differs
    result = convert_to_qoperator(qdq)
    why = "the weight's scales are per axis 1, not per output channel (axis 0)"
    assert result.details["kept_qdq"][conv.name] == why
    x = _test_images(20)
    assert np.array_equal(_run(result.model, x), _run(qdq, x))


def test_int8_inputs_with_uint8_weights_stay_qdq(quantized):
    """ORT has no QLinearConv kernel for int8 inputs with uint8 weights, whatever the output's type."""
    qdq = onnx.load(quantized["resnet_digits"][0])
    inits = {t.name: t for t in qdq.graph.initializer}
    inits["input_zero_point"].CopyFrom(numpy_helper.from_array(np.array(0, np.int8), "input_zero_point"))
    producers = {o: n for n in qdq.graph.node for o in n.output}
    first_conv = next(n for n in qdq.graph.node if n.op_type == "Conv")
    dq = producers[first_conv.input[1]]
    w, zp = (numpy_helper.to_array(inits[name]) for name in dq.input[:3:2])
    inits[dq.input[0]].CopyFrom(numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8), dq.input[0]))
    inits[dq.input[2]].CopyFrom(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), dq.input[2]))
    result = convert_to_qoperator(qdq)  # the same weight values, stored as uint8 with zero point 128
    assert result.details["kept_qdq"][first_conv.name] == "ORT has no kernel for int8 inputs with uint8 weights"
    x = _test_images(20)
    assert np.array_equal(_run(result.model, x), _run(qdq, x))


def test_a_bias_with_a_nonzero_zero_point_keeps_its_conv_in_qdq(quantized):
    """QLinearConv's int32 bias has no zero point: one of 3 would shift every output by 3 steps of s_x * s_w."""
    qdq = onnx.load(quantized["resnet_digits"][0])
    conv = next(n for n in qdq.graph.node if n.op_type == "Conv")
    producers = {o: n for n in qdq.graph.node for o in n.output}
    dq = producers[conv.input[2]]
    channels = next(t for t in qdq.graph.initializer if t.name == dq.input[0]).dims[0]
    zp_name = "bias_zero_point_3"
    qdq.graph.initializer.append(numpy_helper.from_array(np.full(channels, 3, np.int32), zp_name))
    del dq.input[2:]
    dq.input.append(zp_name)
    result = convert_to_qoperator(qdq)
    assert result.details["kept_qdq"][conv.name] == "the bias is not a constant int32 tensor with zero point 0"
    x = _test_images(20)
    assert np.array_equal(_run(result.model, x), _run(qdq, x))


def test_a_float_bias_is_rounded_to_the_sx_sw_grid(quantized):
    """A QDQ model whose Conv bias is a float constant (as tools that leave biases float write it): the
    QLinearConv bias is rint(b / (s_x * s_w)), as ORT's QOperator quantizer rounds it."""
    qdq = onnx.load(quantized["resnet_digits"][0])
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    producers = {o: n for n in qdq.graph.node for o in n.output}
    conv = next(n for n in qdq.graph.node if n.op_type == "Conv")
    s_x = inits[producers[conv.input[0]].input[1]].astype(np.float64)
    s_w = inits[producers[conv.input[1]].input[1]].astype(np.float64)
    b_int = inits[producers[conv.input[2]].input[0]].astype(np.float64)
    b_float = ((b_int + 0.7) * s_x * s_w).astype(np.float32)  # 0.7 of a step above the int32 grid point
    qdq.graph.initializer.append(numpy_helper.from_array(b_float, "bias_float"))
    conv.input[2] = "bias_float"
    expected = np.rint(b_float.astype(np.float64) / (s_x * s_w)).astype(np.int32)
    assert np.array_equal(expected, b_int + 1)  # rounded, not truncated (which would give b_int for b > 0)
    result = convert_to_qoperator(qdq)
    new = next(n for n in result.model.graph.node if n.name == conv.name)
    assert new.op_type == "QLinearConv"
    bias = next(numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name == new.input[8])
    assert bias.dtype == np.int32 and np.array_equal(bias, expected)
