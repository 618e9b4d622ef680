"""Float biases of quantized Conv/ConvTranspose/Gemm nodes written as an Add after the node (the cuda target).

ONNX Runtime's BiasQuantization rewrite (level 1, whatever the EP) turns the float bias of a Conv or Gemm whose
data and weight come from DequantizeLinear into an int32 DequantizeLinear. ORT's CUDA EP has no int32
DequantizeLinear kernel, so that node runs on the host every run, with Memcpy nodes around it, and no CUDA
graph can be captured (measured on the H200: 9 of squeezenet's 26 biases, 33 of the ResNet-50's 54). An
Add of the bias after the node is the same function, and no rewrite matches it: ORT's ConvAddFusion needs
constant weights, which a DequantizeLinear output is not.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.passes._graph import all_tensor_names, initializers, producers, unique_name

_BIAS_AXIS = {"Conv": 1, "ConvTranspose": 1}  # the output channel axis the bias broadcasts over


def biases_as_add(model: onnx.ModelProto, node_names: set[str]) -> int:
    """Move the float initializer bias of the named Conv/ConvTranspose/Gemm nodes of ``model`` (in place) into
    an Add right after each; return how many moved."""
    g = model.graph
    inits = initializers(g)
    taken = all_tensor_names(g) | {n.name for n in g.node}
    producer = producers(g)
    out_nodes, moved = [], 0
    for node in g.node:
        out_nodes.append(node)
        bias = node.input[2] if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 else ""
        if node.name not in node_names or bias not in inits or inits[bias].data_type != onnx.TensorProto.FLOAT:
            continue
        value = _broadcastable(node, numpy_helper.to_array(inits[bias]), _weight_rank(node, inits, producer))
        if value is None:
            continue
        name = unique_name(f"{node.name}_bias", taken)
        out = node.output[0]
        node.output[0] = unique_name(f"{out}_before_bias", taken)
        del node.input[2]
        if node.op_type == "Gemm":  # beta scaled C; without C it means nothing
            for i in [i for i, a in enumerate(node.attribute) if a.name == "beta"][::-1]:
                del node.attribute[i]
        g.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        out_nodes.append(helper.make_node("Add", [node.output[0], name], [out], name=f"{name}_Add"))
        moved += 1
    del g.node[:]
    g.node.extend(out_nodes)
    return moved


def _weight_rank(node: onnx.NodeProto, inits: dict, producers: dict) -> int | None:
    """The rank of the weight (input 1), an initializer or the DequantizeLinear of one; a conv's output has it."""
    name = node.input[1]
    dq = producers.get(name)
    if dq is not None and dq.op_type == "DequantizeLinear":
        name = dq.input[0]
    return len(inits[name].dims) if name in inits else None


def _broadcastable(node: onnx.NodeProto, bias: np.ndarray, rank: int | None) -> np.ndarray | None:
    """The bias shaped to broadcast over the node's output: [1, C, 1, ...] for convolutions, beta * C for Gemm."""
    if node.op_type == "Gemm":
        beta = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "beta"), 1.0)
        return bias * np.float32(beta)
    if rank is None or bias.ndim != 1:
        return None  # the output's rank is unknown here: leave the bias in the node
    shape = [1] * rank
    shape[_BIAS_AXIS[node.op_type]] = bias.size
    return bias.reshape(shape)
