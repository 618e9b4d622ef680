"""TensorRT's rules for explicit quantization (Q/DQ in the ONNX graph, its INT8 path).

What TensorRT's ONNX parser takes (onnx-tensorrt ``QuantDequantLinearHelper``): signed int8 (FP8, and INT4 for
weights) with zero point 0; a uint8 zero point is read as int8, a non-zero one refused; positive scales; one
scale per tensor, or one per channel of the axis given. What its optimizer fuses (TensorRT developer guide,
"Q/DQ layer placement"): a Conv/Gemm/MatMul whose data *and* weight inputs are dequantized, with its weight
quantized per output channel; Conv + activation (no Q/DQ between them); Conv + residual Add when the Add's
other input is quantized. A Q/DQ around an op with no INT8 kernel (Softmax, normalizations, ...) costs a
rounding and a conversion and buys nothing.

An int32 bias DequantizeLinear (ORT's convention) is an error: TensorRT's parser refuses it ("only activation
types allowed as input to this layer", reported with trtexec: onnx-tensorrt #850, onnxruntime #14229), so
TensorRT takes biases as float initializers of their Conv/Gemm, which onnxq's tensorrt target writes. ORT's
TensorRT EP would run such a node outside TensorRT. Not checked here: a TensorRT install; these
rules come from its parser's source and guide, not from building engines.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from onnxq.lint.graph import DEFAULT_DOMAINS, QUANTIZE, WEIGHTED_OPS, GraphView, QDQNode, is_qdq
from onnxq.lint.rules import ERROR, SHARED_RULES, WARNING, Finding, Rule, describe
from onnxq.passes.placement import weight_axis

ACTIVATION_TYPES = ("int8", "float8_e4m3fn")  # what TensorRT quantizes activations to
WEIGHT_TYPES = (*ACTIVATION_TYPES, "int4")  # INT4 is weight-only
# ops TensorRT fuses into the weighted op before them, which a Q/DQ in between stops
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
                     "Softplus", "PRelu", "ThresholdedRelu")  # fmt: skip
# ops TensorRT has no INT8 kernel for: it runs them in FP32/FP16 whatever Q/DQ surrounds them
FLOAT_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
             "Erf", "Gelu", "Exp", "Log", "Sqrt", "Reciprocal", "Div", "Pow")  # fmt: skip
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")


def _int32_constant(q: QDQNode) -> bool:
    return q.reads_constant and q.dtype == "int32"


def _check_int8(view: GraphView) -> Iterator[Finding]:
    for q in view.tensor_qdqs():
        if q.dtype is None or _int32_constant(q):
            continue
        allowed = WEIGHT_TYPES if q.reads_constant else ACTIVATION_TYPES
        if q.dtype not in allowed:
            what = "weight" if q.reads_constant else "activation"
            yield Finding(q.name, f"{q.dtype} {what}: TensorRT quantizes to {', '.join(allowed)} only"
                          + (" (it reads a uint8 zero point as int8)" if q.dtype == "uint8" else ""))  # fmt: skip


def _check_zero_points(view: GraphView) -> Iterator[Finding]:
    for q in view.tensor_qdqs():
        if q.zero_point is None or _int32_constant(q) or not q.zero_point.any():
            continue
        yield Finding(q.name, f"zero point {describe(q.zero_point)}: TensorRT quantizes symmetrically (zero point 0)")


def _check_weight_axes(view: GraphView) -> Iterator[Finding]:
    for node in _weighted_nodes(view):
        dq = view.input_qdq(node, 1)
        if dq is None or not dq.reads_constant or dq.per_tensor or dq.block_size or dq.scale is None:
            continue
        dims = view.constant_dims(dq.node.input[0])
        if not dims:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        expected = weight_axis(node.op_type, attrs, len(dims))
        axis = dq.axis + len(dims) if dq.axis < 0 else dq.axis
        if axis != expected or dq.scale.size != dims[expected]:
            yield Finding(dq.name, f"{dq.scale.size} scales on axis {axis} of {node.op_type} "
                          f"{view.name_of(node)}'s weight {list(dims)}; its output channels are axis {expected} "
                          f"({dims[expected]})", f"quantize the weight per channel on axis {expected}")  # fmt: skip


def _weighted_nodes(view: GraphView) -> Iterator[onnx.NodeProto]:
    return (n for n in view.nodes if n.domain in DEFAULT_DOMAINS and n.op_type in WEIGHTED_OPS and len(n.input) > 1)


def _check_weighted_inputs(view: GraphView) -> Iterator[Finding]:
    for node in _weighted_nodes(view):
        quantized = [view.input_qdq(node, i) is not None for i in (0, 1)]
        if any(quantized) and not all(quantized):
            float_input = quantized.index(False)
            yield Finding(view.name_of(node), f"input {float_input} ({node.input[float_input]}) is float while "
                          f"input {1 - float_input} is dequantized: TensorRT runs {node.op_type} in float",
                          f"quantize input {float_input} too, or neither")  # fmt: skip


def _check_activation_fusion(view: GraphView) -> Iterator[Finding]:
    for node in _weighted_nodes(view):
        for q in view.quantizers_of(node.output[0]):
            for dq in view.consumers(q.node.output[0]):
                acts = [a for a in view.consumers(dq.output[0]) if a.op_type in FUSED_ACTIVATIONS]
                for act in acts:
                    yield Finding(q.name, f"Q/DQ between {node.op_type} {view.name_of(node)} and its "
                                  f"{act.op_type} {view.name_of(act)} stops TensorRT's {node.op_type}+"
                                  f"{act.op_type} fusion", f"quantize {act.op_type}'s output instead")  # fmt: skip


def _check_residual_adds(view: GraphView) -> Iterator[Finding]:
    for node in view.nodes:
        if node.op_type != "Add" or len(node.input) != 2 or any(view.is_constant(t) for t in node.input):
            continue
        dequantized = [i for i, _ in view.activation_input_dqs(node)]
        if len(dequantized) != 1:
            continue
        other = 1 - dequantized[0]
        producer = _past_bias_add(view, view.producer(node.input[other]))
        if producer is not None and producer.op_type in WEIGHTED_OPS:
            continue  # the shape TensorRT fuses: Conv + Add of the quantized shortcut
        source = f"{producer.op_type} {view.name_of(producer)}" if producer is not None else "a graph input"
        yield Finding(
            view.name_of(node),
            f"input {other} comes from {source}, not from a Conv/Gemm/MatMul, and is float: TensorRT cannot "
            "fuse this Add into a convolution and runs it in float",
            f"quantize input {other} too",
        )


def _past_bias_add(view: GraphView, node: onnx.NodeProto | None) -> onnx.NodeProto | None:
    """The producer of a bias Add's data input (MatMul -> Add(bias), as exporters split a Linear), else ``node``."""
    if node is None or node.op_type != "Add" or len(node.input) != 2:
        return node
    constant = [view.is_constant(t) for t in node.input]
    if constant.count(True) != 1:
        return node
    return view.producer(node.input[constant.index(False)]) or node


def _check_int32_biases(view: GraphView) -> Iterator[Finding]:
    for q in view.qdq_nodes:
        if _int32_constant(q):
            readers = ", ".join(f"{n.op_type} {view.name_of(n)}" for n in view.consumers(q.node.output[0]))
            yield Finding(q.name, f"int32 DequantizeLinear (the bias of {readers or 'nothing'})")


def _check_float_ops(view: GraphView) -> Iterator[Finding]:
    for node in view.nodes:
        if node.op_type not in FLOAT_OPS or node.domain not in DEFAULT_DOMAINS:
            continue
        for i, dq in view.activation_input_dqs(node):
            readers = view.consumers(dq.node.output[0])
            if _after_quantize(view, dq) and all(r.op_type in FLOAT_OPS for r in readers):
                yield Finding(
                    view.name_of(node),
                    f"input {i} is quantized and dequantized only for {node.op_type}, which TensorRT runs in "
                    "FP32/FP16 (no INT8 kernel): the pair costs a rounding and a conversion",
                )


def _after_quantize(view: GraphView, dq: QDQNode) -> bool:
    producer = view.producer(dq.node.input[0])
    return producer is not None and producer.op_type == QUANTIZE and is_qdq(producer)


def _check_qoperator_ops(view: GraphView) -> Iterator[Finding]:
    for node in view.nodes:
        if node.op_type in QOPERATOR_OPS or (node.domain == "com.microsoft" and node.op_type.startswith("Q")):
            yield Finding(view.name_of(node), f"{node.op_type} is a QOperator op; TensorRT's parser has none")


TRT_RULES: tuple[Rule, ...] = (
    *SHARED_RULES,
    Rule("trt-int8", ERROR, "Q/DQ are signed int8 (FP8; INT4 for weights), never uint8",
         "quantize with --target tensorrt (int8, zero point 0)", _check_int8),
    Rule("trt-zero-point", ERROR, "zero points are exactly 0 (symmetric quantization)",
         "quantize symmetrically: scale = max|x| / 127, zero point 0", _check_zero_points),
    Rule("trt-weight-axis", ERROR, "a per-channel weight scale runs along the op's output-channel axis "
         "(Conv 0, ConvTranspose 1, Gemm 0 with transB else 1, MatMul the last)",
         "quantize the weight per channel on its output-channel axis", _check_weight_axes),
    Rule("trt-qoperator", ERROR, "QDQ format only: no QLinearConv/QLinearMatMul/ConvInteger/MatMulInteger",
         "export the model in QDQ format", _check_qoperator_ops),
    Rule("trt-weighted-inputs", WARNING, "a Conv/Gemm/MatMul has both its data and its weight input dequantized",
         "quantize both inputs", _check_weighted_inputs),
    Rule("trt-activation-fusion", WARNING, "no Q/DQ between a Conv/Gemm/MatMul and the activation after it",
         "quantize the activation's output instead of the convolution's", _check_activation_fusion),
    Rule("trt-residual-add", WARNING, "an Add with one dequantized input takes its other input straight from a "
         "Conv/Gemm/MatMul (which TensorRT fuses with the Add), or has both dequantized",
         "quantize the other input too", _check_residual_adds),
    Rule("trt-float-op", WARNING, "no Q/DQ pair that only feeds ops TensorRT runs in float (Softmax, "
         "normalizations, Exp/Log/Sqrt/Div/Pow, Erf/Gelu)", "remove the pair: leave the op's input in float",
         _check_float_ops),
    Rule("trt-int32-bias", ERROR, "biases are float: TensorRT's parser takes int8/fp8/int4 into "
         "DequantizeLinear only (ORT's TensorRT EP runs an int32 one outside TensorRT)",
         "keep the bias a float initializer of the Conv/Gemm", _check_int32_biases),
)  # fmt: skip
