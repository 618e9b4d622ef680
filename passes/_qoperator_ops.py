"""One builder per float op: a DQ -> op -> Q group rewritten as the QOperator op ONNX Runtime runs.

Each builder returns the new node, or a string saying why this group stays in QDQ form. The rewrites are
the ones ORT's own QDQ fusion makes on its CPU EP (QLinearConv, QLinearMatMul, MatMulIntegerToFloat, QGemm,
QLinearAdd/Mul, the pooling, Concat, Sigmoid, LeakyRelu and Softmax ops of ``com.microsoft``), so the
converted model computes what ORT computes for the QDQ model, with the graph optimiser's work done ahead.
Data-movement ops (MaxPool, Reshape, Transpose...) between two tensors of exactly the same integer grid run
on the integers directly, which is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.passes._graph import all_tensor_names, unique_name
from onnxq.passes._qoperator_match import EIGHT_BIT, Group, QTensor, attribute, attributes

MS = "com.microsoft"
_INT32 = onnx.TensorProto.INT32
_BIAS_SCALE_RTOL = 1e-6  # s_b is float32(s_x * s_w); a few ulps apart is the same scale, more is another one

# ops that only move or select values: exact on integers when input and output share one grid
MOVE_OPS = ("MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Slice",
            "Gather", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Resize")  # fmt: skip


EIGHT_BIT_MOVES = ("MaxPool", "Resize", "Relu", "Clip")  # integer kernels for 8 bits only (the rest: any type)


class Writer:
    """Adds the initializers and nodes a conversion needs to one graph, with unique names."""

    def __init__(self, graph: onnx.GraphProto, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.taken = all_tensor_names(graph)
        self.used_ms = False

    def const(self, base: str, array: np.ndarray) -> str:
        name = unique_name(base, self.taken)
        self.taken.add(name)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def triple(self, q: QTensor) -> list[str]:
        """``tensor, scale, zero_point`` as QOperator ops take them; an absent zero point becomes explicit."""
        zp = q.zero_point or self.const(f"{q.name}_zero_point", q.zp_value)
        return [q.name, q.scale, zp]

    def node(
        self, group: Group, op_type: str, inputs: list[str], attrs: dict | None = None, *, ms: bool = False
    ) -> onnx.NodeProto:
        """The replacement of ``group``: same name, writing the Q's integer output (or the op's float one)."""
        self.used_ms = self.used_ms or ms
        output = group.output.name if group.output is not None else group.node.output[0]
        node = helper.make_node(op_type, inputs, [output], name=group.node.name, domain=MS if ms else "")
        node.attribute.extend(helper.make_attribute(k, v) for k, v in sorted((attrs or {}).items()))
        return node


def _type_name(elem_type: int) -> str:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def _activation_reason(q: QTensor | None, what: str) -> str | None:
    if q is None:
        return f"{what} is not dequantized from an integer tensor"
    if q.elem_type not in EIGHT_BIT:
        return f"{what} is {_type_name(q.elem_type)}: QOperator kernels take 8 bits"
    if not q.per_tensor:
        return f"{what} has per-channel scales: QOperator ops take one scale per activation"
    return None


def _weight_reason(q: QTensor | None, channel_axis: int, rank: int, what: str = "the weight") -> str | None:
    if q is None:
        return f"{what} is not dequantized from an integer tensor"
    if q.elem_type not in EIGHT_BIT:
        return f"{what} is {_type_name(q.elem_type)}: QOperator kernels take 8 bits"
    if q.per_tensor:
        return None
    if q.axis is None or q.axis % rank != channel_axis % rank or q.scale_value.ndim != 1:
        return f"{what}'s scales are per axis {q.axis}, not per output channel (axis {channel_axis})"
    return None


# (input, weight) integer types ORT's CPU kernels have for QLinearConv, QLinearMatMul and QGemm; the output's
# type must be the input's. An int8 input with uint8 weights has no kernel.
_U8, _S8 = onnx.TensorProto.UINT8, onnx.TensorProto.INT8
KERNEL_TYPES = ((_U8, _S8), (_U8, _U8), (_S8, _S8))


def _kernel_reason(x: QTensor, w: QTensor, y: QTensor | None) -> str | None:
    if (x.elem_type, w.elem_type) not in KERNEL_TYPES:
        return f"ORT has no kernel for {_type_name(x.elem_type)} inputs with {_type_name(w.elem_type)} weights"
    if y is not None and y.elem_type != x.elem_type:
        return f"ORT has no kernel for {_type_name(x.elem_type)} inputs with {_type_name(y.elem_type)} outputs"
    return None


def _first_reason(*reasons: str | None) -> str | None:
    return next((r for r in reasons if r), None)


def _bias(group: Group, x: QTensor, w: QTensor, writer: Writer, index: int, consts: dict) -> str | None:
    """The int32 bias input of ``group``'s op (scale s_x * s_w, zero point 0); None when it has none.

    A dequantized int32 bias is taken as it is when its scale is s_x * s_w; a float constant bias (a QDQ model
    made with biases left float) is rounded to that grid, as ORT's QOperator quantizer does. Raises _Keep
    otherwise."""
    name = group.node.input[index] if len(group.node.input) > index else ""
    if not name:
        return None
    expected = (x.scale_value.astype(np.float64) * w.scale_value.astype(np.float64)).reshape(-1)
    b = group.inputs[index]
    if b is not None:
        scale = b.scale_value.astype(np.float64).reshape(-1)
        if b.elem_type != _INT32 or b.name not in consts or np.any(b.zp_value != 0):
            raise _Keep("the bias is not a constant int32 tensor with zero point 0")
        if scale.size not in (1, expected.size) or not np.allclose(scale, expected, rtol=_BIAS_SCALE_RTOL, atol=0):
            raise _Keep("the bias scale is not s_x * s_w, which QOperator kernels assume")
        return b.name
    if name not in consts or consts[name].dtype != np.float32:
        raise _Keep("the bias is neither a float constant nor dequantized int32")
    q = np.clip(np.rint(consts[name].astype(np.float64) / expected), -(2**31), 2**31 - 1).astype(np.int32)
    return writer.const(f"{name}_int32", q)  # the QDQ model added it in float; within half a step of s_x*s_w


class _Keep(Exception):
    """Raised by a builder's helper: this group stays QDQ, for the reason given."""


def conv(group: Group, writer: Writer, consts: dict) -> onnx.NodeProto | str:
    x, w, y = group.inputs[0], group.inputs[1], group.output
    reason = _first_reason(
        _activation_reason(x, "the input"), _activation_reason(y, "the output"),
        _weight_reason(w, 0, 4) if w is not None and w.name in consts else "the weight is not a constant",
    )  # fmt: skip
    reason = reason or _kernel_reason(x, w, y)
    if reason:
        return reason
    bias = _bias(group, x, w, writer, 2, consts)
    inputs = [*writer.triple(x), *writer.triple(w), y.scale, writer.triple(y)[2]] + ([bias] if bias else [])
    attrs = attributes(group.node)
    return writer.node(group, "QLinearConv", inputs, attrs)


def matmul(group: Group, writer: Writer, consts: dict) -> onnx.NodeProto | str:
    a, b, y = group.inputs[0], group.inputs[1], group.output
    b_rank = consts[b.name].ndim if b is not None and b.name in consts else 2
    reason = _first_reason(_activation_reason(a, "input A"), _weight_reason(b, -1, max(b_rank, 1), "input B"))
    if reason or (b is not None and not b.per_tensor and b_rank != 2):
        return reason or "input B has per-column scales but is not 2-D"
    reason = _kernel_reason(a, b, None if y is None or _activation_reason(y, "") else y)
    if reason:
        return reason
    if y is None:  # float output: ORT's MatMulIntegerToFloat
        ta, tb = writer.triple(a), writer.triple(b)
        return writer.node(group, "MatMulIntegerToFloat", [ta[0], tb[0], ta[1], tb[1], ta[2], tb[2]], ms=True)
    reason = _activation_reason(y, "the output")
    if reason:
        return reason
    return writer.node(group, "QLinearMatMul", [*writer.triple(a), *writer.triple(b), *writer.triple(y)[1:]])


def gemm(group: Group, writer: Writer, consts: dict) -> onnx.NodeProto | str:
    a, b, y = group.inputs[0], group.inputs[1], group.output
    trans_b = attribute(group.node, "transB", 0)
    if attribute(group.node, "alpha", 1.0) != 1.0 or attribute(group.node, "beta", 1.0) != 1.0:
        return "alpha or beta is not 1"
    weight = "input B is not a constant" if b is None or b.name not in consts else None
    reason = _first_reason(
        _activation_reason(a, "input A"),
        weight or _weight_reason(b, 0 if trans_b else 1, 2, "input B"),
        _activation_reason(y, "the output") if y is not None else None,
    )
    reason = reason or _kernel_reason(a, b, y)
    if reason:
        return reason
    bias = _bias(group, a, b, writer, 2, consts) or ""
    inputs = [*writer.triple(a), *writer.triple(b), bias] + (writer.triple(y)[1:] if y is not None else [])
    while inputs and not inputs[-1]:
        inputs.pop()
    attrs = {"transA": attribute(group.node, "transA", 0), "transB": trans_b}
    return writer.node(group, "QGemm", inputs, attrs, ms=True)


def _binary(op_type: str) -> Callable[[Group, Writer, dict], onnx.NodeProto | str]:
    def build(group: Group, writer: Writer, consts: dict) -> onnx.NodeProto | str:
        a, b, y = group.inputs[0], group.inputs[1], group.output
        reason = _first_reason(_activation_reason(a, "input A"), _activation_reason(b, "input B"),
                               _activation_reason(y, "the output"))  # fmt: skip
        if reason:
            return reason
        if len({a.elem_type, b.elem_type, y.elem_type}) != 1:
            return "inputs and output are of different integer types"
        return writer.node(group, op_type, [*writer.triple(a), *writer.triple(b), *writer.triple(y)[1:]], ms=True)

    return build


def _unary(
    op_type: str, attrs: Callable[[Group, Writer], dict]
) -> Callable[[Group, Writer, dict], onnx.NodeProto | str]:
    def build(group: Group, writer: Writer, consts: dict) -> onnx.NodeProto | str:
        x, y = group.inputs[0], group.output
        reason = _first_reason(_activation_reason(x, "the input"), _activation_reason(y, "the output"))
        if reason:
            return reason
        if x.elem_type != y.elem_type:
            return "input and output are of different integer types"
        if any(group.inputs[1:]):
            return "a second input is dequantized"
        return writer.node(group, op_type, [*writer.triple(x), *writer.triple(y)[1:]], attrs(group, writer), ms=True)

    return build


def concat(group: Group, writer: Writer, consts: dict) -> onnx.NodeProto | str:
    y = group.output
    reasons = [_activation_reason(x, f"input {i}") for i, x in enumerate(group.inputs)]
    reason = _first_reason(_activation_reason(y, "the output"), *reasons)
    if reason:
        return reason
    if any(x.elem_type != y.elem_type for x in group.inputs):
        return "inputs and output are of different integer types"
    inputs = writer.triple(y)[1:] + [name for x in group.inputs for name in writer.triple(x)]
    return writer.node(group, "QLinearConcat", inputs, {"axis": attribute(group.node, "axis")}, ms=True)


def move(group: Group, writer: Writer, consts: dict) -> onnx.NodeProto | str:
    """A data-movement op on the integers: its input and output must be on exactly the same grid."""
    x, y = group.inputs[0], group.output
    if x is None or y is None:
        return "its data input or its output is not quantized"
    if any(group.inputs[1:]):
        return "an input other than the data is dequantized"
    if not x.same_quantization(y):
        return "its input and output have different scales or zero points (a requantization)"
    if group.node.op_type == "Resize" and attribute(group.node, "mode", b"nearest") not in (b"nearest", "nearest"):
        return "Resize interpolates (mode is not nearest)"
    if group.node.op_type in EIGHT_BIT_MOVES and x.elem_type not in EIGHT_BIT:
        return f"{group.node.op_type} has no {_type_name(x.elem_type)} kernel"
    if group.node.op_type == "MaxPool" and writer.opset < 12:
        return "MaxPool takes 8-bit integers from opset 12"
    new = onnx.NodeProto()
    new.CopyFrom(group.node)
    new.input[0] = x.name
    new.output[0] = y.name
    return new


def clip(group: Group, writer: Writer, consts: dict) -> onnx.NodeProto | str:
    """Relu and Clip on one integer grid as an integer Clip: Q(clip(DQ(x), lo, hi)) = clip(x, Q(lo), Q(hi))
    because Q is monotone and Q(DQ(x)) = x; Relu is Clip with lo = 0, whose Q is the zero point."""
    reason = move(group, writer, consts)
    if isinstance(reason, str):
        return reason
    if writer.opset < 12:
        return "Clip takes 8-bit integers from opset 12"
    x = group.inputs[0]
    bounds = [0.0, None] if group.node.op_type == "Relu" else [None, None]
    for i, name in enumerate(group.node.input[1:3]):
        if name and name not in consts:
            return "a Clip bound is computed at run time"
        bounds[i] = float(consts[name]) if name else bounds[i]
    info = np.iinfo(onnx.helper.tensor_dtype_to_np_dtype(x.elem_type))
    scale, zp = float(x.scale_value.reshape(-1)[0]), int(x.zp_value.reshape(-1)[0])
    names = []
    for bound in bounds:
        if bound is None:
            names.append("")
            continue
        q = np.clip(np.rint(np.float32(bound) / np.float32(scale)) + zp, info.min, info.max)
        names.append(writer.const(f"{group.node.name or x.name}_bound", np.array(q, dtype=x.zp_value.dtype)))
    while names and not names[-1]:
        names.pop()
    return writer.node(group, "Clip", [x.name, *names])


def _pool_attrs(group: Group, writer: Writer) -> dict:
    attrs = attributes(group.node)
    return {**attrs, "channels_last": 0}


def _softmax_attrs(group: Group, writer: Writer) -> dict:
    return {"axis": attribute(group.node, "axis", -1 if writer.opset >= 13 else 1), "opset": writer.opset}


def _call_safely(build: Callable) -> Callable:
    def run(group: Group, writer: Writer, consts: dict) -> onnx.NodeProto | str:
        try:
            return build(group, writer, consts)
        except _Keep as keep:
            return str(keep)

    return run


BUILDERS: dict[str, Callable[[Group, Writer, dict], onnx.NodeProto | str]] = {
    op: _call_safely(build)
    for op, build in {
        "Conv": conv,
        "MatMul": matmul,
        "Gemm": gemm,
        "Add": _binary("QLinearAdd"),
        "Mul": _binary("QLinearMul"),
        "GlobalAveragePool": _unary("QLinearGlobalAveragePool", lambda g, w: {"channels_last": 0}),
        "AveragePool": _unary("QLinearAveragePool", _pool_attrs),
        "Sigmoid": _unary("QLinearSigmoid", lambda g, w: {}),
        "LeakyRelu": _unary("QLinearLeakyRelu", lambda g, w: {"alpha": attribute(g.node, "alpha", 0.01)}),
        "Softmax": _unary("QLinearSoftmax", _softmax_attrs),
        "Concat": concat,
        "Relu": clip,
        "Clip": clip,
        **dict.fromkeys(MOVE_OPS, move),
    }.items()
}
