"""Fuse activation functions that exporters spell out elementwise into their single ONNX op.

MobileNetV3-style exports (PaddlePaddle's, older torch's) write hard-swish as
``Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`` or ``Mul(x, Div(Clip(Add(x, 3), 0, 6), 6))``: four float
kernels per activation, and, in a quantized model, four ops that split the integer path. ``HardSwish``
(opset 14) computes exactly ``x * max(0, min(1, x/6 + 1/2))``, the same function, as one kernel.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.passes._graph import initializers, producers, remove_nodes, use_counts

HARDSWISH_OPSET = 14


def _const(name: str, inits: dict[str, onnx.TensorProto]) -> float | None:
    """The value of a one-element initializer of any rank (exporters write 3 and 6 as shape [1]), else None."""
    if name not in inits:
        return None
    value = numpy_helper.to_array(inits[name])
    return float(value.reshape(()).item()) if value.size == 1 and np.issubdtype(value.dtype, np.floating) else None


def _ranks(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> rank, where the graph's value_info, inputs or outputs give a shape."""
    return {vi.name: len(vi.type.tensor_type.shape.dim) for vi in (*graph.input, *graph.value_info, *graph.output)
            if vi.type.tensor_type.HasField("shape")}  # fmt: skip


def _keeps_shape(x: str, nodes: list[onnx.NodeProto], inits, ranks: dict[str, int]) -> bool:
    """The constants of ``nodes`` broadcast into ``x`` without adding axes: HardSwish(x) keeps x's shape, so the
    fusion must not drop the axes a shape-[1] constant adds to a rank-0 x."""
    rank = ranks.get(x, 0)  # unknown: only rank-0 constants are safe
    return all(len(inits[i].dims) <= rank for n in nodes for i in n.input if i in inits)


def _clip_bounds(node: onnx.NodeProto, inits) -> tuple[float | None, float | None]:
    lo = _const(node.input[1], inits) if len(node.input) > 1 and node.input[1] else None
    hi = _const(node.input[2], inits) if len(node.input) > 2 and node.input[2] else None
    return lo, hi


def _relu6_of_x_plus_3(t: str, prod, inits, uses) -> tuple[str, list[onnx.NodeProto]] | None:
    """If ``t`` is Clip(Add(x, 3), 0, 6) with single-use intermediates, return (x, [clip, add])."""
    clip = prod.get(t)
    if clip is None or clip.op_type != "Clip" or uses[t] != 1 or _clip_bounds(clip, inits) != (0.0, 6.0):
        return None
    add = prod.get(clip.input[0])
    if add is None or add.op_type != "Add" or uses[clip.input[0]] != 1:
        return None
    for x, c in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        if _const(c, inits) == 3.0 and x not in inits:
            return x, [clip, add]
    return None


def _match_hardswish(node: onnx.NodeProto, prod, inits, uses) -> tuple[str, list[onnx.NodeProto]] | None:
    """Match the hard-swish spellings ending at ``node``; return (x, nodes to remove but ``node``)."""
    if node.op_type == "Div" and _const(node.input[1], inits) == 6.0:
        mul = prod.get(node.input[0])
        if mul is None or mul.op_type != "Mul" or uses[node.input[0]] != 1:
            return None
        for a, b in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            m = _relu6_of_x_plus_3(b, prod, inits, uses)
            if m and m[0] == a:
                return a, [mul, *m[1]]
    if node.op_type == "Mul":
        for a, b in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            div = prod.get(b)
            if div is None or div.op_type != "Div" or uses[b] != 1 or _const(div.input[1], inits) != 6.0:
                continue
            m = _relu6_of_x_plus_3(div.input[0], prod, inits, uses)
            if m and m[0] == a:
                return a, [div, *m[1]]
    return None


def fuse_hard_swish(graph: onnx.GraphProto, opset: int) -> int:
    """Replace each spelled-out hard-swish by one HardSwish node; returns how many. Needs opset >= 14."""
    if opset < HARDSWISH_OPSET:
        return 0
    prod, inits, uses, ranks = producers(graph), initializers(graph), use_counts(graph), _ranks(graph)
    doomed: list[onnx.NodeProto] = []
    fused = 0
    for node in list(graph.node):
        if any(node is d for d in doomed):
            continue
        match = _match_hardswish(node, prod, inits, uses)
        if match is None or not _keeps_shape(match[0], [node, *match[1]], inits, ranks):
            continue
        x, inner = match
        hs = helper.make_node("HardSwish", [x], list(node.output), name=f"{node.name or 'hardswish'}_hardswish")
        node.CopyFrom(hs)
        doomed.extend(inner)
        fused += 1
    remove_nodes(graph, doomed)
    return fused


def hard_swish_reference(x: np.ndarray) -> np.ndarray:
    """x * relu6(x + 3) / 6, for tests."""
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
