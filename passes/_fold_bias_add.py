"""Fold a per-channel constant ``Mul`` or ``Add`` after a Conv into the Conv's weight and bias.

Some exporters (PaddlePaddle's, for one) write a convolution's bias as a separate ``Add`` of a constant
shaped [1, C, 1, 1] or [C, 1, 1], and Caffe exports write BatchNorm as a ``Scale`` layer: a per-channel ``Mul``
then an ``Add`` after each Conv. ``Conv(x, W, b) * c`` is ``Conv(x, c * W, c * b)`` (``c`` along the output
channels) and ``Conv(x, W, b) + d`` is ``Conv(x, W, b + d)``, exactly up to one float rounding of each
product and sum. In a quantized model the separate Mul and Add would be float ops between Q/DQ pairs: 160 of
them on a ResNet-50 Caffe export, which then runs only 1.12x faster than float.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.passes._graph import (
    all_tensor_names,
    graph_output_names,
    initializers,
    producers,
    remove_nodes,
    unique_name,
    use_counts,
)


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


def fold_scale_muls(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Fold ``Mul(Conv(...), const)`` into the Conv's weight and bias where the constant is per channel;
    returns {Conv name: the [C] factor}, for the statistics kept of the Conv's output."""
    prod, inits, uses, outputs = producers(graph), initializers(graph), use_counts(graph), graph_output_names(graph)
    taken = all_tensor_names(graph)
    doomed, folded = [], {}
    for mul in graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        for x, c in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            conv = _foldable_conv(prod.get(x), x, c, inits, uses, outputs)
            if conv is None:
                continue
            dims = inits[conv.input[1]].dims
            vec = _channel_vector(inits[c], int(dims[0]), len(dims))
            if vec is None or not np.isfinite(vec).all():
                continue
            _scale_conv(graph, conv, vec.astype(np.float64), inits, taken)
            conv.output[0] = mul.output[0]  # the Mul's readers now read the Conv; x had no other reader
            doomed.append(mul)
            folded[conv.name] = folded.get(conv.name, 1.0) * vec
            break
    remove_nodes(graph, doomed)
    return folded


def _foldable_conv(conv, x: str, c: str, inits: dict, uses, outputs) -> onnx.NodeProto | None:
    """The Conv producing ``x`` when ``x`` has one reader, ``c`` and the Conv's weight (and bias) are float32
    initializers; else None."""
    if conv is None or conv.op_type != "Conv" or c not in inits or uses[x] != 1 or x in outputs:
        return None
    w = inits.get(conv.input[1])
    if w is None or w.data_type != onnx.TensorProto.FLOAT or inits[c].data_type != onnx.TensorProto.FLOAT:
        return None
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits:
        return None
    return conv


def _scale_conv(graph: onnx.GraphProto, conv: onnx.NodeProto, vec: np.ndarray, inits: dict, taken: set) -> None:
    """Write c * W and c * b as new initializers of ``conv`` (others may read the old ones)."""
    base = conv.name or conv.output[0]
    for index, suffix in ((1, "weight_scaled"), (2, "bias_scaled")):
        if len(conv.input) <= index or not conv.input[index]:
            continue
        old = numpy_helper.to_array(inits[conv.input[index]]).astype(np.float64)
        name = unique_name(f"{base}_{suffix}", taken)
        taken.add(name)
        tensor = numpy_helper.from_array((old * vec.reshape((-1,) + (1,) * (old.ndim - 1))).astype(np.float32), name)
        graph.initializer.append(tensor)
        inits[name] = tensor
        conv.input[index] = name


def fold_bias_adds(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Fold ``Add(Conv(...), const)`` into the Conv's bias where the constant is per channel; returns {Conv
    name: the [C] shift}."""
    prod, inits, uses, outputs = producers(graph), initializers(graph), use_counts(graph), graph_output_names(graph)
    taken = all_tensor_names(graph)
    doomed, folded = [], {}
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        for x, c in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            conv = _foldable_conv(prod.get(x), x, c, inits, uses, outputs)
            if conv is None:
                continue
            w = inits[conv.input[1]]
            vec = _channel_vector(inits[c], int(w.dims[0]), len(w.dims))
            if vec is None:
                continue
            has_bias = len(conv.input) > 2 and conv.input[2]
            old = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias else 0.0
            bias_name = unique_name(f"{conv.name or conv.output[0]}_bias_folded", taken)
            taken.add(bias_name)
            graph.initializer.append(
                numpy_helper.from_array((old + vec.astype(np.float64)).astype(np.float32), bias_name)
            )
            if has_bias:
                conv.input[2] = bias_name
            else:
                conv.input.append(bias_name)
            conv.output[0] = add.output[0]  # the Add's readers now read the Conv; x had no other reader
            doomed.append(add)
            folded[conv.name] = folded.get(conv.name, 0.0) + vec
            break
    remove_nodes(graph, doomed)
    return folded
