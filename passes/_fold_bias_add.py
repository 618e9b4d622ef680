"""Fold a per-channel constant ``Add`` after a Conv into the Conv's bias.

Some exporters (PaddlePaddle's, for one) write a convolution's bias as a separate ``Add`` of a constant
shaped [1, C, 1, 1] or [C, 1, 1]. ``Conv(x, W, b) + c`` is ``Conv(x, W, b + c)``, exactly up to one float
rounding of the sum, and in a quantized model the separate Add would be a float op between two Q/DQ pairs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.passes._graph import graph_output_names, initializers, producers, remove_nodes, use_counts


def _channel_vector(t: onnx.TensorProto, channels: int, rank: int) -> np.ndarray | None:
    """The constant as a [C] vector if, broadcast against the Conv's rank-``rank`` output [N, C, ...], it
    varies along the channel axis only; else None."""
    a = numpy_helper.to_array(t)
    if a.ndim > rank:
        return None
    shape = (1,) * (rank - a.ndim) + a.shape  # numpy broadcasting aligns shapes on the right
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(a.reshape(-1), (channels,)).copy() if a.size == 1 else a.reshape(channels)


def fold_bias_adds(graph: onnx.GraphProto) -> int:
    """Fold ``Add(Conv(...), const)`` into the Conv's bias where the constant is per channel; returns how many."""
    prod, inits, uses, outputs = producers(graph), initializers(graph), use_counts(graph), graph_output_names(graph)
    doomed = []
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        for x, c in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            conv = prod.get(x)
            if conv is None or conv.op_type != "Conv" or c not in inits or uses[x] != 1 or x in outputs:
                continue
            w = inits.get(conv.input[1])
            if w is None or w.data_type != onnx.TensorProto.FLOAT or inits[c].data_type != onnx.TensorProto.FLOAT:
                continue
            channels = int(w.dims[0])
            vec = _channel_vector(inits[c], channels, len(w.dims))
            if vec is None or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits):
                continue
            has_bias = len(conv.input) > 2 and conv.input[2]
            old = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias else 0.0
            bias_name = f"{conv.name or conv.output[0]}_bias_folded"
            graph.initializer.append(
                numpy_helper.from_array((old + vec.astype(np.float64)).astype(np.float32), bias_name)
            )
            if has_bias:
                conv.input[2] = bias_name
            else:
                conv.input.append(bias_name)
            conv.output[0] = add.output[0]  # the Add's readers now read the Conv; x had no other reader
            doomed.append(add)
            break
    remove_nodes(graph, doomed)
    return len(doomed)
