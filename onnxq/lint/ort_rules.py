"""ONNX Runtime CPU EP rules: the DQ -> op -> Q groups its QDQ fusion turns into integer kernels.

``ORT_FUSIONS`` is the table of ORT's ``QDQSelectorActionTransformer`` (onnxruntime/core/optimizer/
qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc and qdq_selectors.cc), reduced to what
decides a fusion on the CPU EP: which inputs must come from a DequantizeLinear, whether the output must go
(only) to QuantizeLinear nodes, whether input and output must share scale and zero point (the "drop" rules),
and which integer types the kernel takes. A group that misses one of these is not fused and runs as
DequantizeLinear + float op + QuantizeLinear: correct, slower than float. One case is an error: an int32
bias whose scale is not s_x * s_w cannot be added to the integer accumulator at all.

Two facts of ORT that the rules follow: a float bias of a fused Conv/Gemm is fine (ORT's BiasQuantization
rewrite quantizes it to int32 itself), and int8 *activations* on Conv/MatMul fuse only where
``session.qdqisint8allowed`` is on (ARM by default; on x86 ORT converts some of them to uint8 itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx

from onnxq.lint.graph import BIASED_OPS, DEFAULT_DOMAINS, QUANTIZE, GraphView, QDQNode, is_qdq
from onnxq.lint.rules import ERROR, SHARED_RULES, WARNING, Finding, Rule, describe

# float32 rounding of s_x * s_w, whichever precision a tool multiplied in (a few ulps)
BIAS_SCALE_RTOL = 4 * float(np.finfo(np.float32).eps)
SIXTEEN_BIT = ("int16", "uint16")
_CLIPS = ("Relu", "Clip")  # ORT folds a Relu/Clip between the op and its Q into the group (a "redundant clip")
_REMOVED_FIRST = ("Dropout", "Identity")  # ORT's level-1 rewrites remove them before the QDQ fusion runs


@dataclass(frozen=True)
class Fusion:
    """One of ORT's QDQ selectors: what a DQ -> op -> Q group must look like for ORT to fuse it."""

    kernel: str  # what ORT turns the group into ("{op}": the op type)
    dq_inputs: str  # "all": every input; "first": input 0; "two": inputs 0 and 1; "values": Where's 1 and 2
    output_q: str  # "required", "optional" (a float-output kernel exists) or "none"
    same_params: bool = False  # the DQ and Q are dropped: they must share scale and zero point
    allow_16bit: bool = False
    weighted: bool = False  # Conv/MatMul/Gemm: an activation type and a weight type

    def kernel_for(self, op_type: str) -> str:
        return self.kernel.format(op=op_type)


_CONV = Fusion("QLinearConv", "all", "required", weighted=True)
_MATMUL = Fusion("QLinearMatMul / MatMulIntegerToFloat", "two", "optional", weighted=True)
_GEMM = Fusion("QGemm", "all", "optional", weighted=True)
_BINARY = Fusion("QLinear{op}", "all", "required")
_CONCAT = Fusion("QLinearConcat", "all", "required")
_UNARY = Fusion("QLinear{op}", "first", "required")
_DROP = Fusion("{op} on 8/16-bit data (DQ and Q dropped)", "first", "required", same_params=True, allow_16bit=True)
_DROP_8BIT = Fusion("{op} on 8-bit data (DQ and Q dropped)", "first", "required", same_params=True)
ORT_FUSIONS: dict[str, Fusion] = {
    "Conv": _CONV,
    "MatMul": _MATMUL,
    "Gemm": _GEMM,
    **dict.fromkeys(("Add", "Mul"), _BINARY),
    "Concat": _CONCAT,
    **dict.fromkeys(("AveragePool", "GlobalAveragePool", "LeakyRelu", "Sigmoid", "Softmax"), _UNARY),
    **dict.fromkeys(
        (
            "Expand",
            "Flatten",
            "Gather",
            "GatherElements",
            "Reshape",
            "Slice",
            "Squeeze",
            "Tile",
            "Transpose",
            "Unsqueeze",
        ),
        _DROP,
    ),  # fmt: skip
    **dict.fromkeys(("MaxPool", "ReduceMax", "ReduceMin", "Resize"), _DROP_8BIT),
    "Split": Fusion("Split on 8-bit data", "first", "required", same_params=True),
    "Where": Fusion("QLinearWhere", "values", "required"),
    "ArgMax": Fusion("ArgMax on 8-bit data", "first", "none"),
}


def _groups(view: GraphView) -> Iterator[tuple[onnx.NodeProto, Fusion | None]]:
    """Every non-Q/DQ node that reads a dequantized activation, with ORT's fusion for its op (or None)."""
    for node in view.nodes:
        if not is_qdq(node) and node.op_type not in _REMOVED_FIRST and view.activation_input_dqs(node):
            yield node, ORT_FUSIONS.get(node.op_type) if node.domain in DEFAULT_DOMAINS else None


def _output_readers(view: GraphView, tensor: str) -> tuple[str, list[onnx.NodeProto]]:
    """The tensor a group's Q reads (past a single Relu/Clip, which ORT folds) and that tensor's readers."""
    readers = view.consumers(tensor)
    if len(readers) == 1 and readers[0].op_type in _CLIPS and tensor not in view.graph_outputs:
        tensor = readers[0].output[0]
        readers = view.consumers(tensor)
    return tensor, readers


def _output_qs(view: GraphView, node: onnx.NodeProto) -> list[QDQNode]:
    return [view.qdq(r) for out in node.output if out for r in _output_readers(view, out)[1]
            if r.op_type == QUANTIZE and is_qdq(r)]  # fmt: skip


# --- ort-partial-group --------------------------------------------------------------------------------


def _check_partial_groups(view: GraphView) -> Iterator[Finding]:
    for node, fusion in _groups(view):
        if fusion is None:
            continue
        reason = _missing_input(view, node, fusion) or _output_problem(view, node, fusion)
        if reason:
            yield Finding(view.name_of(node), f"{reason}: {_runs_in_float(node, fusion)}")


def _runs_in_float(node: onnx.NodeProto, fusion: Fusion) -> str:
    return f"ORT runs {node.op_type} in float, not as {fusion.kernel_for(node.op_type)}"


def _missing_input(view: GraphView, node: onnx.NodeProto, fusion: Fusion) -> str:
    wanted = {"first": [0], "two": [0, 1], "values": [1, 2]}.get(fusion.dq_inputs)
    if wanted is None:
        wanted = [i for i, name in enumerate(node.input) if name]
    for i in wanted:
        if i >= len(node.input) or view.input_qdq(node, i) is not None:
            continue
        if i == 2 and node.op_type in BIASED_OPS and _float_constant(view, node.input[2]):
            continue  # ORT's BiasQuantization rewrite quantizes a float bias itself
        return f"input {i} ({node.input[i]}) is not dequantized"
    return ""


def _float_constant(view: GraphView, tensor: str) -> bool:
    value = view.constant(tensor)
    return value is not None and np.issubdtype(value.dtype, np.floating)


def _output_problem(view: GraphView, node: onnx.NodeProto, fusion: Fusion) -> str:
    if fusion.output_q == "none":
        return ""
    for out in (o for o in node.output if o):
        tensor, readers = _output_readers(view, out)
        quantized = [r for r in readers if r.op_type == QUANTIZE]
        if not quantized and fusion.output_q == "optional":
            continue  # a float-output kernel (MatMulIntegerToFloat, QGemm with float output)
        if tensor in view.graph_outputs:
            return f"its output {tensor} is a graph output"
        floats = [r for r in readers if r.op_type != QUANTIZE]
        if floats:
            return f"its output also feeds {floats[0].op_type} {view.name_of(floats[0])} unquantized"
        if not quantized:
            return f"its output {tensor} is not quantized"
    return ""


# --- ort-no-fusion, ort-drop-params, ort-type-combo -----------------------------------------------------


def _check_unfused_ops(view: GraphView) -> Iterator[Finding]:
    for node, fusion in _groups(view):
        if fusion is None and _output_qs(view, node):
            yield Finding(view.name_of(node), f"DequantizeLinear -> {node.op_type} -> QuantizeLinear: ORT has no "
                          f"QDQ fusion for {node.op_type}, so it runs in float between the two")  # fmt: skip


def _check_drop_params(view: GraphView) -> Iterator[Finding]:
    for node, fusion in _groups(view):
        if fusion is None or not fusion.same_params:
            continue
        dq = view.input_qdq(node, 0)
        for q in _output_qs(view, node):
            if dq is None or q.scale is None or dq.scale is None:
                continue
            same = q.scale.shape == dq.scale.shape and np.array_equal(q.scale, dq.scale)
            if same and _zero_points_equal(q, dq):
                continue
            yield Finding(view.name_of(node), f"input dequantized with scale {describe(dq.scale)}, zero point "
                          f"{describe(dq.zero_point)}, output quantized with {describe(q.scale)}, "
                          f"{describe(q.zero_point)}: ORT drops the pair around {node.op_type} only when they "
                          "are equal, so it runs in float", "quantize the output with the input's scale and zero "
                          "point (the op does not change the values' range)")  # fmt: skip


def _zero_points_equal(a: QDQNode, b: QDQNode) -> bool:
    za = np.zeros(1, np.int64) if a.zero_point is None else a.zero_point.astype(np.int64).ravel()
    zb = np.zeros(1, np.int64) if b.zero_point is None else b.zero_point.astype(np.int64).ravel()
    return za.shape == zb.shape and bool(np.array_equal(za, zb))


def _check_type_combos(view: GraphView) -> Iterator[Finding]:
    for node, fusion in _groups(view):
        if fusion is None:
            continue
        problem = _weighted_types(view, node, fusion) if fusion.weighted else _uniform_types(view, node, fusion)
        if problem:
            yield Finding(view.name_of(node), f"{problem}: {_runs_in_float(node, fusion)}")


def _weighted_types(view: GraphView, node: onnx.NodeProto, fusion: Fusion) -> str:
    x, w = view.input_qdq(node, 0), view.input_qdq(node, 1)
    if x is None or w is None or x.dtype is None or w.dtype is None:
        return ""  # ort-partial-group reports a missing DQ
    outs = {q.dtype for q in _output_qs(view, node)} - {None, x.dtype}
    if outs:
        return f"{x.dtype} input quantized to {outs.pop()} at the output (the kernel keeps one type)"
    wide = [t for t in (x.dtype, w.dtype) if t in SIXTEEN_BIT]
    if wide:
        return f"{wide[0]} data: the CPU EP has no 16-bit {fusion.kernel_for(node.op_type)}"
    if x.dtype == "int8" and w.dtype != "int8":
        return f"int8 activations with {w.dtype} weights: the CPU EP has no kernel for that pair"
    if x.dtype == "int8" and node.op_type != "Gemm":
        return (
            "int8 activations (fused only with session.qdqisint8allowed, on by default on ARM; on x86 only where "
            "ORT's S8->U8 rewrite makes them uint8)"
        )
    return ""


def _uniform_types(view: GraphView, node: onnx.NodeProto, fusion: Fusion) -> str:
    types = [dq.dtype for _, dq in view.activation_input_dqs(node)] + [q.dtype for q in _output_qs(view, node)]
    known = sorted({t for t in types if t is not None})
    if len(known) > 1:
        return f"mixed types ({', '.join(known)}) in one group (the kernel takes one)"
    if known and known[0] in SIXTEEN_BIT and not fusion.allow_16bit:
        return f"{known[0]} data: the CPU EP's {fusion.kernel_for(node.op_type)} is 8-bit only"
    return ""


# --- ort-bias-scale ------------------------------------------------------------------------------------


def _check_bias_scales(view: GraphView) -> Iterator[Finding]:
    for node in view.nodes:
        if node.op_type not in BIASED_OPS or node.domain not in DEFAULT_DOMAINS:
            continue
        bias, x, w = (view.input_qdq(node, i) for i in (2, 0, 1))
        if bias is None or not bias.reads_constant or bias.dtype != "int32" or bias.scale is None:
            continue
        if bias.zero_point is not None and bias.zero_point.any():
            yield Finding(bias.name, f"int32 bias with zero point {describe(bias.zero_point)} (must be 0)")
        if x is None or w is None or x.scale is None or w.scale is None or _gemm_beta(node) != 1.0:
            continue  # no integer kernel takes this bias (QGemm needs beta 1): its scale does not matter
        problem = _bias_scale_problem(bias.scale.ravel(), (x.scale.astype(np.float32) * w.scale.astype(np.float32)))
        if problem:
            yield Finding(bias.name, f"{problem} of {node.op_type} {view.name_of(node)}")


def _gemm_beta(node: onnx.NodeProto) -> float:
    return next((a.f for a in node.attribute if a.name == "beta"), 1.0) if node.op_type == "Gemm" else 1.0


def _bias_scale_problem(actual: np.ndarray, expected: np.ndarray) -> str:
    expected = expected.ravel().astype(np.float64)
    if actual.size != expected.size and 1 not in (actual.size, expected.size):
        return f"{actual.size} bias scales for {expected.size} weight scales"
    if np.allclose(actual, expected, rtol=BIAS_SCALE_RTOL, atol=0):
        return ""
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero scale is qdq-scale's to report
        off = float(np.max(np.abs(actual / expected - 1)))
    return f"scale {describe(actual)} is not input scale x weight scale {describe(expected)} (off by {off:.3g})"


ORT_RULES: tuple[Rule, ...] = (
    *SHARED_RULES,
    Rule("ort-bias-scale", ERROR, "an int32 bias DequantizeLinear has scale s_x * s_w (to float32 rounding) and "
         "zero point 0", "quantize the bias with scale s_x * s_w, zero point 0", _check_bias_scales),
    Rule("ort-partial-group", WARNING, "a group ORT fuses is complete: every input it needs comes from a "
         "DequantizeLinear, and its output goes only to QuantizeLinear nodes",
         "quantize the missing input or output, or leave the op unquantized", _check_partial_groups),
    Rule("ort-no-fusion", WARNING, "DequantizeLinear -> op -> QuantizeLinear only around ops ORT fuses "
         "(Conv, MatMul, Gemm, Add, Mul, Concat, pooling, Sigmoid, Softmax, LeakyRelu, data movement, ...)",
         "leave the op's output unquantized (no Q/DQ pair after it)", _check_unfused_ops),
    Rule("ort-drop-params", WARNING, "around data movement and MaxPool/Resize the DequantizeLinear and "
         "QuantizeLinear share scale and zero point (ORT then drops both)",
         "quantize the output with the input's scale and zero point", _check_drop_params),
    Rule("ort-type-combo", WARNING, "the group's integer types are ones ORT's CPU kernels take (uint8 or int8 "
         "activations with int8 weights, one type through the group, 8-bit)",
         "quantize with --target ort (uint8 activations, int8 weights)", _check_type_combos),
)  # fmt: skip
