"""Folding an inference BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

BatchNormalization computes ``y = s * (x - mean) + beta`` per channel, with ``s = gamma / sqrt(var + eps)``.
When ``x`` is the output of a linear op with weight ``W`` and bias ``b``, ``y`` is the same linear op with
weight ``s * W`` (scaled along the output-channel axis) and bias ``s * (b - mean) + beta``. The arithmetic
is done in float64 and cast back to the weight's dtype once, so folding adds one rounding per element.

A BN is folded only when doing so cannot change anything else: its input has the BN as its single
reader and is not a graph output, all its parameters and the producer's weight and bias are
initializers, the shapes agree, and the BN is in inference mode. Otherwise a reason is returned and the
BN stays.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.passes._graph import (
    all_tensor_names,
    graph_output_names,
    initializers,
    producers,
    remove_nodes,
    set_initializer,
    unique_name,
    use_counts,
)
from onnxq.quantize.pipeline import BNStats

FOLDABLE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class _BatchNorm:
    gamma: np.ndarray  # float64, [C]
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float

    @property
    def factor(self) -> np.ndarray:
        return self.gamma / np.sqrt(self.var + self.eps)

    @property
    def shift(self) -> np.ndarray:
        """What the BN adds after scaling: beta - s * mean."""
        return self.beta - self.factor * self.mean


@dataclass
class _Graph:
    """The graph with the maps a fold reads; ``uses`` and ``taken`` are kept current while folding."""

    proto: onnx.GraphProto
    inits: dict[str, onnx.TensorProto]
    uses: Counter[str]
    taken: set[str]

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])


def fold_batch_norms(graph: onnx.GraphProto) -> tuple[int, dict[str, dict], dict[str, str]]:
    """Fold every foldable BatchNormalization of ``graph`` (in place) into its producer.

    Returns (number folded, bn_stats, {BN node name: why it was left}). ``bn_stats`` maps the producer's
    node name to {"output": its output name after folding, "mean": beta, "std": |gamma|} (float32, per
    channel): the statistics of the pre-activation the BN normalised, which later passes rely on.
    """
    g = _Graph(graph, initializers(graph), use_counts(graph), all_tensor_names(graph))
    made = producers(graph)
    outputs = graph_output_names(graph)
    stats: dict[str, dict] = {}
    left: dict[str, str] = {}
    folded: list[onnx.NodeProto] = []
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or bn.domain not in _DEFAULT_DOMAINS:
            continue
        producer = made.get(bn.input[0])
        reason = _why_not_foldable(bn, producer, g, outputs)
        params = None if reason else _read_batch_norm(bn, g)
        if params is not None:
            reason = _fold_into(producer, params, g)
        if reason:
            left[bn.name or bn.output[0]] = reason
            continue
        producer.output[0] = bn.output[0]
        folded.append(bn)
        stats[producer.name] = BNStats(
            output=bn.output[0], mean=params.beta.astype(np.float32), std=np.abs(params.gamma).astype(np.float32)
        )
    remove_nodes(graph, folded)
    return len(folded), stats, left


def _why_not_foldable(
    bn: onnx.NodeProto, producer: onnx.NodeProto | None, g: _Graph, outputs: set[str]
) -> str | None:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in bn.attribute}
    if attrs.get("training_mode", 0) or any(name and g.uses[name] for name in bn.output[1:]):
        return "it is in training mode (it updates or outputs running statistics)"
    if attrs.get("spatial", 1) == 0:
        return "spatial=0 (per-element statistics) is not supported"
    if (
        producer is None
        or producer.op_type not in FOLDABLE_PRODUCERS
        or producer.domain not in _DEFAULT_DOMAINS
    ):
        return "its input is not produced by a Conv, ConvTranspose or Gemm"
    if g.uses[bn.input[0]] != 1 or bn.input[0] in outputs:
        return f"the output of {producer.name!r} has other readers than the BatchNormalization"
    if len(bn.input) < 5 or not all(name in g.inits for name in bn.input[1:5]):
        return "its scale, bias, mean or variance is not an initializer"
    if len(producer.input) < 2 or producer.input[1] not in g.inits:
        return f"the weight of {producer.name!r} is not an initializer"
    if len(producer.input) > 2 and producer.input[2] and producer.input[2] not in g.inits:
        return f"the bias of {producer.name!r} is not an initializer"
    return None


def _read_batch_norm(bn: onnx.NodeProto, g: _Graph) -> _BatchNorm:
    gamma, beta, mean, var = (g.array(name).astype(np.float64) for name in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    return _BatchNorm(gamma, beta, mean, var, float(eps))


def _fold_into(producer: onnx.NodeProto, bn: _BatchNorm, g: _Graph) -> str | None:
    """Rewrite the producer's weight and bias; return a reason (and change nothing) when shapes disagree."""
    channels = bn.gamma.shape
    if any(p.shape != channels for p in (bn.beta, bn.mean, bn.var)) or len(channels) != 1:
        return "its parameters are not 1-D tensors of one length"
    if np.any(bn.var + bn.eps <= 0):
        return "variance + epsilon is not positive in some channel"
    weight = g.array(producer.input[1])
    if producer.op_type == "Gemm":
        return _fold_into_gemm(producer, bn, weight, g)
    if weight.ndim < 3:
        return f"the weight of {producer.name!r} has rank {weight.ndim}; a convolution weight has rank >= 3"
    group = next((a.i for a in producer.attribute if a.name == "group"), 1)
    if group < 1:
        return f"{producer.name!r} has group {group}; a convolution has at least one group"
    out_channels = weight.shape[0] if producer.op_type == "Conv" else group * weight.shape[1]
    if out_channels != channels[0] or weight.shape[0] % group:
        return (
            f"the weight {weight.shape} of {producer.name!r} (group {group}) does not have "
            f"{channels[0]} output channels"
        )
    bias = _input_array(producer, 2, g, out_channels)
    if bias.shape != channels:
        return f"the bias of {producer.name!r} has shape {bias.shape}, not ({out_channels},)"
    if producer.op_type == "Conv":
        new_weight = weight * bn.factor.reshape((-1,) + (1,) * (weight.ndim - 1))
    else:  # ConvTranspose: weight [C_in, C_out/group, k...]; output channel = group index * C_out/group + j
        grouped = weight.reshape((group, weight.shape[0] // group) + weight.shape[1:])
        factor = bn.factor.reshape((group, 1, weight.shape[1]) + (1,) * (weight.ndim - 2))
        new_weight = (grouped * factor).reshape(weight.shape)
    return _write_folded(producer, new_weight, bn.factor * bias + bn.shift, weight.dtype, g)


def _fold_into_gemm(producer: onnx.NodeProto, bn: _BatchNorm, weight: np.ndarray, g: _Graph) -> str | None:
    """Gemm: Y = alpha * A' B' + beta * C; the BN scales the columns of B', C becomes s * beta * C + shift."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in producer.attribute}
    trans_b = attrs.get("transB", 0)
    if weight.ndim != 2:
        return f"the weight of {producer.name!r} has rank {weight.ndim}, not 2"
    out_channels = weight.shape[0] if trans_b else weight.shape[1]
    if out_channels != bn.gamma.shape[0]:
        return (
            f"{producer.name!r} has {out_channels} output columns, the BatchNormalization {bn.gamma.shape[0]}"
        )
    new_weight = weight * (bn.factor[:, None] if trans_b else bn.factor[None, :])
    c = _input_array(producer, 2, g, out_channels)
    # C may be [], [N], [1, N], [M, 1] or [M, N]; broadcasting with the [N] factor keeps it valid for Gemm.
    new_c = bn.factor * (attrs.get("beta", 1.0) * c) + bn.shift
    reason = _write_folded(producer, new_weight, new_c, weight.dtype, g)
    if reason is None:
        _set_float_attribute(producer, "beta", 1.0)
    return reason


def _write_folded(producer: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray, dtype, g: _Graph) -> str | None:
    """Store the folded weight and bias in ``dtype``; a reason (and nothing written) when a finite float64
    value overflows it (huge BN statistics): the BN then stays, as the model computed it."""
    with np.errstate(over="ignore", invalid="ignore"):
        cast = [a.astype(dtype) for a in (weight, bias)]
    if any((np.isfinite(a) & ~np.isfinite(c)).any() for a, c in zip((weight, bias), cast, strict=True)):
        return f"folding it into {producer.name!r} overflows {np.dtype(dtype)}"
    _write(producer, 1, cast[0], g, "weight")
    _write(producer, 2, cast[1], g, "bias")
    return None


def _input_array(node: onnx.NodeProto, index: int, g: _Graph, channels: int) -> np.ndarray:
    """The initializer at input ``index`` in float64, or zeros of [channels] when the input is absent."""
    if len(node.input) > index and node.input[index]:
        return g.array(node.input[index]).astype(np.float64)
    return np.zeros(channels, dtype=np.float64)


def _write(node: onnx.NodeProto, index: int, array: np.ndarray, g: _Graph, suffix: str) -> None:
    """Store ``array`` as input ``index`` of ``node``: in place when the node is its only reader."""
    name = node.input[index] if len(node.input) > index else ""
    if name and g.uses[name] == 1:
        set_initializer(g.proto, name, array)
        return
    if name:
        g.uses[name] -= 1  # this node stops reading the shared tensor
    new_name = unique_name(f"{node.name}_{suffix}", g.taken)
    set_initializer(g.proto, new_name, array)
    g.uses[new_name] = 1
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = new_name


def _set_float_attribute(node: onnx.NodeProto, name: str, value: float) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.f = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))
