"""Where Q/DQ pairs go, per op family and target: the placement policy as data.

Each :class:`OpRule` says which inputs of an op are quantized activations, which input is a weight
(and on which axis it is quantized per channel), which is a bias (int32, scale s_x * s_w), and what
happens to the output. ``onnxq policy`` prints these tables, so no default is hidden.

Output modes:
- ``always``: the output gets a Q/DQ pair, so ORT can fuse DQ -> op -> Q into one integer kernel;
- ``consumed``: only when a quantized op reads it (Gemm/MatMul have float-output integer kernels);
- ``shared``: the output reuses the input's scale and zero point (data movement, MaxPool), so ORT
  drops the DQ/Q around the op and runs it on 8-bit data;
- ``fold``: the op is removed and its range given to the producer's output (Relu, Clip); the
  quantizer's saturation then does the clipping. Only with asymmetric activations.
- ``none``: the output is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

    from onnxq.passes.qdq import QDQPlan



@dataclass(frozen=True)
class OpRule:
    family: str
    ops: tuple[str, ...]
    inputs: str  # "first": input 0; "all": every non-constant input; "shortcut": the residual branch only
    output: str  # always | consumed | shared | fold | none
    weight_input: int | None = None
    bias_input: int | None = None
    note: str = ""
    # attributes the target's integer kernel does not take: ORT fuses DQ -> op -> Q into that kernel with the
    # node's attributes and then refuses the model (QLinearAveragePool: "Unrecognized attribute: dilations")
    float_if_attrs: tuple[str, ...] = ()


def kernel_refusal(rule: OpRule, node: onnx.NodeProto) -> str | None:
    """Why the target's integer kernel cannot run ``node`` (so the node stays float), or None."""
    present = [a.name for a in node.attribute if a.name in rule.float_if_attrs]
    if present:
        return f"has a {present[0]!r} attribute, which the integer kernel ({rule.note.split(';')[0]}) does not take"
    return None


def weight_axis(op_type: str, attrs: dict, weight_rank: int) -> int:
    """The output-channel axis of a weight for per-channel quantization."""
    if op_type == "Conv":
        return 0
    if op_type == "ConvTranspose":
        return 1  # weight is [C_in, C_out / group, k...]
    if op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    if op_type == "MatMul":
        return weight_rank - 1  # [.., K, N]: one scale per output column
    raise KeyError(op_type)


_DATA_MOVEMENT = (
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Split",
    "Pad",
    "Gather",
)

_ORT_RULES = (
    OpRule("conv", ("Conv", "ConvTranspose"), "first", "always", 1, 2, "QLinearConv / ConvTranspose"),
    OpRule("gemm", ("Gemm",), "first", "consumed", 1, 2, "QGemm; float output when no quantized op reads it"),
    OpRule(
        "matmul",
        ("MatMul",),
        "all",
        "consumed",
        1,
        None,
        "QLinearMatMul / MatMulIntegerToFloat; a constant input is the weight",
    ),
    OpRule(
        "binary",
        ("Add", "Mul"),
        "all",
        "always",
        None,
        None,
        "QLinearAdd / QLinearMul; only when both inputs are quantized activations",
    ),
    OpRule(
        "concat",
        ("Concat",),
        "all",
        "always",
        None,
        None,
        "QLinearConcat; one scale shared by inputs and output",
    ),
    OpRule("maxpool", ("MaxPool",), "first", "shared", None, None, "runs on int8 with the input's scale"),
    OpRule(
        "avgpool",
        ("AveragePool", "GlobalAveragePool"),
        "first",
        "always",
        None,
        None,
        "QLinearAveragePool / QLinearGlobalAveragePool; float with dilations",
        float_if_attrs=("dilations",),
    ),
    OpRule(
        "activation",
        ("Relu", "Clip"),
        "first",
        "fold",
        None,
        None,
        "removed; the producer's output range does the clipping",
    ),
    OpRule("lut", ("Sigmoid", "Softmax"), "first", "always", None, None, "QLinearSigmoid / QLinearSoftmax"),
    OpRule("resize", ("Resize",), "first", "shared", None, None, "runs on int8 with the input's scale"),
    OpRule(
        "data_movement",
        _DATA_MOVEMENT,
        "first",
        "shared",
        None,
        None,
        "shares the input's scale so that ORT drops the DQ/Q pair around it",
    ),
)

# TensorRT (explicit quantization): symmetric int8, Q/DQ on op inputs, TensorRT propagates and fuses
# the rest. On a residual Add only the shortcut input gets Q/DQ, so that Conv + Add fuse.
_TRT_RULES = (
    OpRule("conv", ("Conv", "ConvTranspose"), "first", "none", 1, 2, "Q/DQ on input and weight"),
    OpRule("gemm", ("Gemm",), "first", "none", 1, 2, "Q/DQ on input and weight"),
    OpRule("matmul", ("MatMul",), "all", "none", 1, None, "Q/DQ on both inputs"),
    OpRule(
        "residual_add",
        ("Add",),
        "shortcut",
        "none",
        None,
        None,
        "Q/DQ on the shortcut input only, so the Conv producing the other input fuses with the Add",
    ),
    OpRule("concat", ("Concat",), "all", "none", None, None, "one scale shared by the inputs"),
    OpRule(
        "pool",
        ("MaxPool", "AveragePool", "GlobalAveragePool"),
        "first",
        "none",
        None,
        None,
        "Q/DQ on the input",
    ),
)

# ONNX Runtime's CUDA EP: no integer kernel runs a QDQ graph (each DequantizeLinear runs, then the float kernel)
# and DequantizeLinear has no int32 kernel there (ORT would run a bias DQ on the host every run), so Q/DQ go
# only on the inputs of the ops that have weights, and the biases stay float (the target's int32_bias): the
# fewest dequantizations and no host-side node, so the whole model can be captured as a CUDA graph.
_CUDA_RULES = (
    OpRule("conv", ("Conv", "ConvTranspose"), "first", "none", 1, 2, "Q/DQ on input and weight; the bias stays float"),
    OpRule("gemm", ("Gemm",), "first", "none", 1, 2, "Q/DQ on input and weight; the bias stays float"),
    OpRule("matmul", ("MatMul",), "all", "none", 1, None, "Q/DQ on both inputs"),
)

POLICIES: dict[str, tuple[OpRule, ...]] = {"ort": _ORT_RULES, "tensorrt": _TRT_RULES, "cuda": _CUDA_RULES}


def rule_for(op_type: str, target: str) -> OpRule | None:
    for rule in POLICIES[target]:
        if op_type in rule.ops:
            return rule
    return None


def format_policy(target: str) -> str:
    """The placement table of ``target`` as aligned text."""
    from onnxq.quantize.targets import get_target

    bias_kind = "int32" if get_target(target).int32_bias else "float"
    rows = [("family", "ops", "inputs", "weight", "bias", "output", "note")]
    for r in POLICIES[target]:
        rows.append(
            (
                r.family,
                ",".join(r.ops),
                r.inputs,
                "-" if r.weight_input is None else str(r.weight_input),
                "-" if r.bias_input is None else f"{r.bias_input} ({bias_kind})",
                r.output,
                r.note,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = []
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths, strict=False)) + "  " + row[6])
    return "\n".join(lines)


# ops whose int8 kernel is the point of quantizing them, and which a float neighbour can make a net loss
BOUNDARY_OPS = ("Conv", "GlobalAveragePool")


def float_boundary_nodes(model: onnx.ModelProto, plan: QDQPlan) -> list[str]:
    """Planned Conv and GlobalAveragePool nodes that read from, or feed, a node left in float.

    ``plan`` is :func:`onnxq.passes.qdq.plan_qdq`'s for ``model``. A node is float when the plan neither
    quantizes it nor folds it (no rule for its op on the target, e.g. HardSwish or HardSigmoid on ORT, or a
    skipped Add/Mul). Between such a node and an int8 Conv sit a QuantizeLinear and a DequantizeLinear of a
    whole activation tensor; at MobileNetV3 sizes they cost more than the int8 Conv saves (measured on
    ppocr_mobile_v2_cls in bench/results/quantize_vs_ort.md). Leaving these nodes float removes the pair.
    Graph inputs and outputs are not float nodes, nor are Shape and Size, which read no values.
    """
    from onnxq.passes._graph import producers, readers

    done = set(plan.nodes) | set(plan.folded)
    producer, consumers = producers(model.graph), readers(model.graph)

    def is_float(node) -> bool:  # Shape and Size read no values: they need no dequantized tensor
        return node is not None and node.name not in done and node.op_type not in ("Shape", "Size")

    chosen = []
    for node in model.graph.node:
        if node.op_type not in BOUNDARY_OPS or node.name not in plan.nodes:
            continue
        out = plan.renames.get(node.output[0], node.output[0])  # past a Relu folded into this node
        near = [producer.get(node.input[0]), *consumers.get(out, [])]
        if any(is_float(n) for n in near):
            chosen.append(node.name)
    return chosen
