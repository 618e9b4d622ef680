"""A read-only view of one graph for the lint: who writes and reads each tensor, which tensors are constants,
and the quantization parameters of every QuantizeLinear/DequantizeLinear.

Constants are initializers and the outputs of Constant nodes, in this graph or an enclosing one (a subgraph
reads its parents' tensors by name). Tensors are decoded only when a rule asks for their values, so the big
weights are never read unless a rule needs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.inspect.facts import dtype_name
from onnxq.passes._graph import constant_node_tensor, node_names

QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"
DEFAULT_DOMAINS = ("", "ai.onnx")
# the weight of a weighted op is its input 1 (Conv, ConvTranspose: [out, in, k...] / [in, out, k...]; Gemm, MatMul)
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
BIASED_OPS = ("Conv", "ConvTranspose", "Gemm")  # input 2 is the bias


@dataclass(frozen=True)
class QDQNode:
    """A QuantizeLinear or DequantizeLinear and its parameters; ``None`` where a value is not a constant."""

    node: onnx.NodeProto
    name: str
    scale: np.ndarray | None
    zero_point: np.ndarray | None  # None: absent (ONNX's default 0) or not a constant
    zero_point_is_constant: bool  # False only when a zero point is given and computed at run time
    dtype: str | None  # the integer side's type ("int8", "uint8", "int32", ...); None when it cannot be told
    axis: int  # as written (may be negative); per-tensor nodes ignore it
    block_size: int
    reads_constant: bool  # a DequantizeLinear of a constant: a weight or a bias

    @property
    def is_quantize(self) -> bool:
        return self.node.op_type == QUANTIZE

    @property
    def per_tensor(self) -> bool:
        return self.scale is not None and self.scale.size == 1 and self.block_size == 0


def is_qdq(node: onnx.NodeProto) -> bool:
    """A QuantizeLinear or DequantizeLinear of the default domain."""
    return node.domain in DEFAULT_DOMAINS and node.op_type in (QUANTIZE, DEQUANTIZE)


class GraphView:
    """One graph (the main graph or a subgraph at ``where``), with ``outer`` the view of the enclosing graph."""

    def __init__(self, graph: onnx.GraphProto, where: str = "main", outer: GraphView | None = None) -> None:
        self.graph = graph
        self.where = where
        self.outer = outer
        self.nodes = list(graph.node)
        self._names = {id(n): name for n, name in zip(self.nodes, node_names(graph), strict=True)}
        self._producer = {out: n for n in self.nodes for out in n.output if out}
        self._consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for name in n.input:
                if name:
                    self._consumers.setdefault(name, []).append(n)
        self._protos: dict[str, onnx.TensorProto] = dict(outer._protos) if outer else {}
        self._protos.update((t.name, t) for t in graph.initializer)
        for n in self.nodes:
            tensor = constant_node_tensor(n)
            if tensor is not None:
                self._protos[tensor.name] = tensor
        self.graph_outputs = {o.name for o in graph.output}
        self._values: dict[str, np.ndarray] = {}
        self._qdqs: dict[int, QDQNode] = {}

    # --- navigation --------------------------------------------------------------------------------

    def name_of(self, node: onnx.NodeProto) -> str:
        """The node's name, or the name onnxq gives an unnamed node (``{op_type}_{first output}``)."""
        return self._names.get(id(node)) or node.name or node.op_type

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        """The node writing ``tensor``: in this graph, else in an enclosing one; None for inputs and constants."""
        found = self._producer.get(tensor)
        if found is None and self.outer is not None:
            return self.outer.producer(tensor)
        return found

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        """The nodes of this graph reading ``tensor``, in graph order."""
        return self._consumers.get(tensor, [])

    def is_constant(self, tensor: str) -> bool:
        return tensor in self._protos

    def constant_dims(self, tensor: str) -> tuple[int, ...] | None:
        proto = self._protos.get(tensor)
        return None if proto is None else tuple(proto.dims)

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of a constant tensor (decoded once), or None when ``tensor`` is not a constant."""
        if tensor not in self._values:
            proto = self._protos.get(tensor)
            if proto is None:
                return None
            self._values[tensor] = numpy_helper.to_array(proto)
        return self._values[tensor]

    def input_qdq(self, node: onnx.NodeProto, index: int) -> QDQNode | None:
        """The DequantizeLinear that writes input ``index`` of ``node``, or None."""
        if index >= len(node.input) or not node.input[index]:
            return None
        producer = self.producer(node.input[index])
        if producer is None or producer.op_type != DEQUANTIZE or not is_qdq(producer):
            return None
        return self.qdq(producer)

    def activation_input_dqs(self, node: onnx.NodeProto) -> list[tuple[int, QDQNode]]:
        """(input index, DequantizeLinear) for each input of ``node`` dequantized from an activation."""
        found = ((i, self.input_qdq(node, i)) for i in range(len(node.input)))
        return [(i, dq) for i, dq in found if dq is not None and not dq.reads_constant]

    def quantizers_of(self, tensor: str) -> list[QDQNode]:
        """The QuantizeLinear nodes reading ``tensor``."""
        return [self.qdq(n) for n in self.consumers(tensor) if n.op_type == QUANTIZE and is_qdq(n)]

    # --- Q/DQ nodes ------------------------------------------------------------------------------

    @cached_property
    def qdq_nodes(self) -> list[QDQNode]:
        return [self.qdq(n) for n in self.nodes if is_qdq(n)]

    def tensor_qdqs(self) -> Iterator[QDQNode]:
        """One Q/DQ per quantized tensor: every QuantizeLinear, and each DequantizeLinear not fed by one (of a
        constant, or of a graph input already quantized). A DequantizeLinear after its QuantizeLinear is
        checked against it by the pair rule instead, so each fact about a tensor is reported once."""
        for q in self.qdq_nodes:
            if q.is_quantize:
                yield q
                continue
            producer = self.producer(q.node.input[0])
            if producer is None or producer.op_type != QUANTIZE:
                yield q

    def qdq(self, node: onnx.NodeProto) -> QDQNode:
        if id(node) not in self._qdqs:
            self._qdqs[id(node)] = self._read_qdq(node)
        return self._qdqs[id(node)]

    def _read_qdq(self, node: onnx.NodeProto) -> QDQNode:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        scale = self.constant(node.input[1]) if len(node.input) > 1 else None
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zero_point = self.constant(zp_name) if zp_name else None
        return QDQNode(
            node=node,
            name=self.name_of(node),
            scale=None if scale is None else np.asarray(scale, dtype=np.float64),
            zero_point=None if zero_point is None else np.asarray(zero_point),
            zero_point_is_constant=not zp_name or zero_point is not None,
            dtype=self._qdq_dtype(node, attrs, zp_name),
            axis=int(attrs.get("axis", 1)),
            block_size=int(attrs.get("block_size", 0)),
            reads_constant=node.op_type == DEQUANTIZE and self.is_constant(node.input[0]),
        )

    def _qdq_dtype(self, node: onnx.NodeProto, attrs: dict, zp_name: str) -> str | None:
        """The integer type of a Q/DQ: its zero point's, else the constant it dequantizes, else the Q that
        feeds it, else ``output_dtype`` (opset 21), else ONNX's default for QuantizeLinear (uint8)."""
        for tensor in (zp_name, node.input[0] if node.op_type == DEQUANTIZE else ""):
            if tensor and tensor in self._protos:
                return dtype_name(self._protos[tensor].data_type)
        if node.op_type == DEQUANTIZE:
            producer = self.producer(node.input[0])
            if producer is not None and producer.op_type == QUANTIZE and is_qdq(producer):
                return self.qdq(producer).dtype
            return None
        if zp_name:
            return None  # a computed zero point: its type is not known without shape inference
        if "output_dtype" in attrs and attrs["output_dtype"]:
            return dtype_name(int(attrs["output_dtype"]))
        return "uint8"


def iter_views(model: onnx.ModelProto) -> Iterator[GraphView]:
    """The main graph's view, then each subgraph's (If branches, Loop and Scan bodies), depth first."""
    yield from _walk(GraphView(model.graph))


def _walk(view: GraphView) -> Iterator[GraphView]:
    yield view
    for node in view.nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                subs = [(attr.g, "")]
            elif attr.type == onnx.AttributeProto.GRAPHS:
                subs = [(g, f"[{i}]") for i, g in enumerate(attr.graphs)]
            else:
                continue
            for sub, suffix in subs:
                yield from _walk(GraphView(sub, f"{view.where}/{view.name_of(node)}.{attr.name}{suffix}", view))
