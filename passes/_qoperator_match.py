"""What the QOperator conversion sees around one float op: the DequantizeLinear nodes feeding it and the
QuantizeLinear node reading its output, with their scales and zero points resolved to values.

A QDQ model states each quantized tensor as ``x_q -> DequantizeLinear(scale, zero_point) -> op``; a
QOperator op takes ``x_q, scale, zero_point`` directly. This module finds those triples (scales and zero
points may be initializers or Constant nodes, as other tools write them) and says why a group cannot be
converted when it cannot, so that every node left in QDQ form carries a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.passes._graph import constant_node_tensor, graph_output_names, producers, readers

EIGHT_BIT = (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)
_DEFAULT_ZP_TYPE = onnx.TensorProto.UINT8  # a Q/DQ without zero point (and no output_dtype) is uint8


@dataclass(frozen=True)
class QTensor:
    """A quantized tensor as a QOperator op takes it: the integer tensor, its scale and zero point."""

    name: str  # the integer tensor (DequantizeLinear's input, or QuantizeLinear's output)
    scale: str
    zero_point: str | None  # None: absent in the model (value 0 of ``elem_type``)
    scale_value: np.ndarray
    zp_value: np.ndarray
    elem_type: int  # onnx.TensorProto data type of the integer tensor
    axis: int | None  # None when per tensor
    node: onnx.NodeProto  # the DequantizeLinear or QuantizeLinear itself

    @property
    def per_tensor(self) -> bool:
        return self.scale_value.size == 1

    def same_quantization(self, other: QTensor) -> bool:
        """Exactly the same integer grid: a data-movement op between them needs no requantization."""
        return (
            self.elem_type == other.elem_type
            and self.per_tensor
            and other.per_tensor
            and float(self.scale_value.reshape(-1)[0]) == float(other.scale_value.reshape(-1)[0])
            and int(self.zp_value.reshape(-1)[0]) == int(other.zp_value.reshape(-1)[0])
        )


@dataclass(frozen=True)
class Group:
    """A float op with, per input, the DequantizeLinear that feeds it (or None) and the Q of its output."""

    node: onnx.NodeProto
    inputs: tuple[QTensor | None, ...]
    output: QTensor | None  # the single QuantizeLinear that is the only reader of the op's only output


class GraphIndex:
    """Producers, readers, constants and graph outputs of one graph, computed once per conversion."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = producers(graph)
        self.readers = readers(graph)
        self.outputs = graph_output_names(graph)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            tensor = constant_node_tensor(node) if node.op_type == "Constant" else None
            if tensor is not None:
                self.consts[node.output[0]] = numpy_helper.to_array(tensor)
        self.elem_types = {t.name: t.data_type for t in graph.initializer}
        self.elem_types.update({v.name: v.type.tensor_type.elem_type for v in graph.input})

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def quantized_input(self, name: str) -> QTensor | None:
        """The DequantizeLinear producing ``name``, as a QTensor; None when ``name`` is not dequantized here."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            return None
        return self._qtensor(node, node.input[0])

    def quantized_output(self, node: onnx.NodeProto) -> QTensor | None:
        """The QuantizeLinear that alone reads ``node``'s only output (not a graph output), as a QTensor."""
        if len([o for o in node.output if o]) != 1 or node.output[0] in self.outputs:
            return None
        users = self.readers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or users[0].input[0] != node.output[0]:
            return None
        return self._qtensor(users[0], users[0].output[0])

    def group(self, node: onnx.NodeProto) -> Group:
        inputs = tuple(self.quantized_input(name) if name else None for name in node.input)
        return Group(node, inputs, self.quantized_output(node))

    def _qtensor(self, node: onnx.NodeProto, tensor: str) -> QTensor | None:
        attrs = attributes(node)
        if attrs.get("block_size", 0) or len(node.input) < 2 or node.input[1] not in self.consts:
            return None  # blocked or computed scales: no QOperator op takes them
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zp_name is not None and zp_name not in self.consts:
            return None
        scale = self.consts[node.input[1]]
        elem_type = self._integer_type(node, tensor, zp_name, attrs)
        if node.op_type == "DequantizeLinear" and self._own_type(tensor) not in (None, elem_type):
            return None  # a zero point of another type than the tensor: not a model ORT's kernels take
        if zp_name is not None:
            zp = self.consts[zp_name]
        else:
            zp = np.zeros(scale.shape, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem_type))
        axis = None if scale.size == 1 else int(attrs.get("axis", 1))
        return QTensor(tensor, node.input[1], zp_name, scale, zp, elem_type, axis, node)

    def _own_type(self, tensor: str) -> int | None:
        """The type ``tensor`` has by its own definition (constant, graph input, QuantizeLinear); None if unknown."""
        if tensor in self.consts:
            return onnx.helper.np_dtype_to_tensor_dtype(self.consts[tensor].dtype)
        if self.elem_types.get(tensor):
            return self.elem_types[tensor]
        q = self.producer.get(tensor)
        if q is None or q.op_type != "QuantizeLinear":
            return None
        q_zp = q.input[2] if len(q.input) > 2 and q.input[2] in self.consts else None
        return self._integer_type(q, q.output[0], q_zp, attributes(q))

    def _integer_type(self, node: onnx.NodeProto, tensor: str, zp_name: str | None, attrs: dict) -> int:
        """The integer type of ``tensor``: its zero point's; for a DQ without one, the tensor's own (constant,
        input, producing QuantizeLinear); else ``output_dtype`` or uint8, as the operators define."""
        if zp_name is not None:
            return onnx.helper.np_dtype_to_tensor_dtype(self.consts[zp_name].dtype)
        own = self._own_type(tensor) if node.op_type == "DequantizeLinear" else None
        return own or int(attrs.get("output_dtype", 0)) or _DEFAULT_ZP_TYPE


def attributes(node: onnx.NodeProto) -> dict:
    """``node``'s attributes as {name: value}."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name``, or ``default``."""
    return attributes(node).get(name, default)
