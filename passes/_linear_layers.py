"""A uniform view of the linear layers that CLE and bias correction rescale: Conv, Gemm, MatMul.

Both passes think in channels: a layer has an output-channel axis and an input-channel axis in its
weight, a bias with one value per output channel, and an output tensor whose channel axis is known.
:func:`linear_layer` reads that view from a node (or says why the node does not fit it), and the helpers
below do the per-channel arithmetic in float64, so that every rewrite rounds to float32 once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.passes._graph import initializers, set_initializer


@dataclass(frozen=True)
class LinearLayer:
    """A Conv (dense or depthwise), Gemm or MatMul whose weight is an initializer.

    ``in_axis``/``out_axis`` index the weight; ``channel_axis`` indexes the output tensor (1 for Conv,
    the last axis for Gemm and MatMul). A depthwise Conv has ``in_axis == out_axis == 0``: input channel i
    feeds output channel i only. ``bias`` is the bias input's initializer name (None when absent).
    """

    node: onnx.NodeProto
    kind: str  # "conv", "depthwise", "gemm", "matmul"
    weight: str
    bias: str | None
    in_axis: int
    out_axis: int
    out_rank: int  # rank of the output tensor
    alpha: float = 1.0  # Gemm: Y = alpha * A B + beta * C
    beta: float = 1.0

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def channel_axis(self) -> int:
        return 1 if self.kind in ("conv", "depthwise") else self.out_rank - 1

    def out_channels(self, shape: tuple[int, ...]) -> int:
        return shape[self.out_axis]

    def in_channels(self, shape: tuple[int, ...]) -> int:
        return shape[self.in_axis]


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def linear_layer(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> LinearLayer | str:
    """The layer view of ``node``, or a short reason why it has none."""
    layer = _layer_view(node, inits)
    if isinstance(layer, str) or layer.bias is None:
        return layer
    bias_dims = tuple(inits[layer.bias].dims)
    channels = layer.out_channels(tuple(inits[layer.weight].dims))
    # a Conv bias is [C_out]; a Gemm C broadcasts against [M, N] and must be one value per column (or one)
    fits = (
        bias_dims == (channels,)
        if layer.kind in ("conv", "depthwise")
        else per_channel_vector(np.zeros(bias_dims), layer.out_rank, layer.channel_axis, channels) is not None
    )
    return layer if fits else f"its bias {list(bias_dims)} does not hold one value per output channel ({channels})"


def _layer_view(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> LinearLayer | str:
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "Gemm", "MatMul"):
        return "not a Conv, Gemm or MatMul"
    if len(node.input) < 2 or node.input[1] not in inits:
        return "its weight is not an initializer"
    w_tensor = inits[node.input[1]]
    if w_tensor.data_type != onnx.TensorProto.FLOAT:
        return "its weight is not float32"
    dims = tuple(w_tensor.dims)
    if 0 in dims:
        return f"its weight {list(dims)} is empty"
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias not in inits:
        return "its bias is not an initializer"
    a = attrs(node)
    if node.op_type == "Conv":
        return _conv_layer(node, dims, bias, a)
    if node.op_type == "Gemm":
        if a.get("transA", 0):
            return "Gemm with transA=1 (its input channels are not on the last axis)"
        if len(dims) != 2:
            return "Gemm weight is not 2-D"
        trans_b = a.get("transB", 0)
        return LinearLayer(
            node, "gemm", node.input[1], bias, 1 if trans_b else 0, 0 if trans_b else 1, 2,
            float(a.get("alpha", 1.0)), float(a.get("beta", 1.0)),
        )  # fmt: skip
    if len(dims) != 2:
        return "MatMul weight is not 2-D"
    return LinearLayer(node, "matmul", node.input[1], None, 0, 1, 2)


def _conv_layer(node: onnx.NodeProto, dims: tuple[int, ...], bias: str | None, a: dict) -> LinearLayer | str:
    if len(dims) < 3:
        return "Conv weight has rank below 3"
    group = int(a.get("group", 1))
    if group < 1:
        return f"Conv with group {group} (a convolution has at least one group)"
    if group == 1:
        return LinearLayer(node, "conv", node.input[1], bias, 1, 0, len(dims))
    if dims[1] == 1 and dims[0] == group:
        return LinearLayer(node, "depthwise", node.input[1], bias, 0, 0, len(dims))
    return f"grouped Conv (group {group}, {dims[1]} input channels per group) is not handled"


def channel_ranges(w: np.ndarray, axis: int) -> np.ndarray:
    """max |w| over every axis but ``axis``: the range of each channel for symmetric quantization."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    return np.abs(w).max(axis=red) if red else np.abs(w)


def scale_channels(w: np.ndarray, axis: int, s: np.ndarray) -> np.ndarray:
    """``w`` with channel i along ``axis`` multiplied by ``s[i]``."""
    shape = [1] * w.ndim
    shape[axis] = -1
    return w * s.reshape(shape)


def per_channel_vector(value: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """A constant that broadcasts against a rank-``rank`` tensor as one value per channel on ``axis``,
    returned as a [channels] vector; None when it varies along any other axis (or has too many dims)."""
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    for i, d in enumerate(shape):
        if d != 1 and (i != axis or d != channels):
            return None
    return np.broadcast_to(value.reshape(shape), _channel_shape(rank, axis, channels)).reshape(channels)


def _channel_shape(rank: int, axis: int, channels: int) -> tuple[int, ...]:
    shape = [1] * rank
    shape[axis] = channels
    return tuple(shape)


def as_broadcast(vector: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A [C] vector shaped to broadcast on ``axis`` of a rank-``rank`` tensor, without leading ones."""
    shape = _channel_shape(rank, axis, vector.size)
    return vector.reshape(shape[axis:])


def array(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray:
    return numpy_helper.to_array(inits[name]).astype(np.float64)


def apply_to_constant(layer: LinearLayer, w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The layer's output, per output channel, for a constant input of ``c[i]`` on input channel i.

    For a Conv this ignores zero padding (the border outputs see fewer inputs), so callers use it exactly
    only where the Conv has no padding.
    """
    if layer.kind == "conv":
        red = tuple(range(2, w.ndim))
        return w.sum(axis=red) @ c
    if layer.kind == "depthwise":
        red = tuple(range(1, w.ndim))
        return w.sum(axis=red) * c
    if layer.kind == "gemm":
        out = (w @ c) if layer.in_axis == 1 else (c @ w)
        return layer.alpha * out
    return c @ w  # matmul: [K] @ [K, N]


def conv_has_padding(node: onnx.NodeProto) -> bool:
    """Whether a Conv pads its input (explicit pads or SAME auto-padding)."""
    a = attrs(node)
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return True
    return any(p != 0 for p in a.get("pads", []))


class ParamStore:
    """Float64 copies of the initializers a pass rewrites, written back as float32 once, at the end."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.inits = initializers(graph)
        self.values: dict[str, np.ndarray] = {}
        self.layout: dict[str, tuple[int, ...]] = {}  # the shape each value is written back with

    def get(self, name: str) -> np.ndarray:
        if name not in self.values:
            value = numpy_helper.to_array(self.inits[name]).astype(np.float64)
            self.values[name], self.layout[name] = value, value.shape
        return self.values[name]

    def vector(self, name: str, layer: LinearLayer, channels: int) -> np.ndarray:
        """A per-channel bias or Add constant as a [channels] vector; it is written back in its own
        layout, or (when it was one value for all channels) broadcast on the layer's channel axis."""
        value = self.get(name)
        if value.shape != (channels,):
            if value.size != channels:
                self.layout[name] = as_broadcast(np.zeros(channels), layer.out_rank, layer.channel_axis).shape
            value = per_channel_vector(value, layer.out_rank, layer.channel_axis, channels).copy()
            self.values[name] = value
        return value

    def set(self, name: str, value: np.ndarray) -> None:
        self.get(name)
        if value.size != int(np.prod(self.layout[name])):
            self.layout[name] = value.shape  # e.g. a scalar Gemm C that became one value per channel
        self.values[name] = value

    def write(self, graph: onnx.GraphProto) -> None:
        """Store every value read or set (as float32, in its layout), and start afresh."""
        for name, value in self.values.items():
            set_initializer(graph, name, value.reshape(self.layout[name]).astype(np.float32))
        self.values.clear()
        self.layout.clear()
        self.inits = initializers(graph)
