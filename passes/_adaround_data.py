"""The rows AdaRound optimises on: layer inputs sampled from calibration data, with the float targets.

For a round of layers (layers that no other pending layer feeds), the float model and, in sequential
mode, the partly quantized QDQ model are run batch by batch in onnxruntime with the layers' inputs
exposed as extra outputs. At the same seeded, sampled positions of each batch the pass keeps:

* the input rows the optimiser will multiply (from the QDQ model, or from the float model), and
* the target ``alpha * W @ x_float`` (the float layer's output without bias, on the float input).

Each layer keeps at most ``cache_bytes`` of rows, spread evenly over the batches, so memory does not
grow with the calibration set or the feature-map size (while the rows are joined and shuffled at the
end of a round, a layer briefly holds up to three copies of them). The positions depend only on the seed, the
layer and the batch, so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxq.errors import DataError
from onnxq.passes._adaround_ops import Geometry, gather_rows, positions_per_sample, weight_to_matrix
from onnxq.passes._graph import iter_nodes
from onnxq.quantize.calibrate import _session
from onnxq.quantize.qtypes import QParams

_CPU = ("CPUExecutionProvider",)


@dataclass
class Layer:
    """A node whose weight AdaRound rounds."""

    index: int  # position among the layers, which seeds its sampling
    node: str
    weight: str  # initializer name
    geom: Geometry
    w: np.ndarray
    qparams: QParams
    input: str = ""  # the node's input 0 in the float model


@dataclass
class LayerRows:
    x: np.ndarray  # [groups, R, in_per_group], shuffled
    target: np.ndarray  # [groups, R, out_per_group], same row order


def layer_rounds(model: onnx.ModelProto, layers: list[Layer]) -> list[list[Layer]]:
    """Layers grouped by depth: no layer of a round reads, even indirectly, the output of a layer of the
    same or a later round, so a whole round can be sampled from one run of the partly quantized model."""
    by_node = {layer.node: layer for layer in layers}
    level: dict[str, int] = {}  # tensor -> number of layers on the longest path above it
    depth: dict[str, int] = {}
    for node in model.graph.node:
        reads = [name for sub in iter_nodes_of(node) for name in sub.input]
        here = max((level.get(name, 0) for name in reads), default=0)
        if node.name in by_node:
            depth[node.name] = here
            here += 1
        for out in node.output:
            level[out] = here
    rounds: dict[int, list[Layer]] = {}
    for layer in layers:
        rounds.setdefault(depth[layer.node], []).append(layer)
    return [rounds[d] for d in sorted(rounds)]


def iter_nodes_of(node: onnx.NodeProto) -> Iterable[onnx.NodeProto]:
    """The node and the nodes of its subgraphs (whose outer-scope reads are inputs too)."""
    yield node
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subs:
            yield from iter_nodes(sub)


def expose(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` with the tensors ``names`` also graph outputs (types left to onnxruntime)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    for name in dict.fromkeys(names):
        if name not in present:
            out.graph.output.add().name = name
    return out


def rows_budget(layer: Layer, cache_bytes: int, itemsize: int = 4) -> int:
    """How many rows of input and target fit in ``cache_bytes``."""
    wm_shape = weight_to_matrix(layer.geom, layer.w).shape
    per_row = itemsize * wm_shape[0] * (wm_shape[1] + wm_shape[2])
    return max(1, cache_bytes // per_row)


def collect_rows(
    float_model: onnx.ModelProto,
    quant_model: onnx.ModelProto | None,
    layers: list[Layer],
    dataset,
    batch_size: int,
    cache_bytes: int,
    seed: int,
) -> dict[str, LayerRows]:
    """Sample each layer's rows over the whole dataset; ``quant_model`` None takes the inputs from the
    float model. ``quant_model`` must keep the node names of ``float_model``."""
    float_inputs = [layer.input for layer in layers]
    quant_inputs = _quant_inputs(quant_model, layers) if quant_model is not None else float_inputs
    budgets = [rows_budget(layer, cache_bytes) for layer in layers]
    total = len(dataset)
    xs: list[list[np.ndarray]] = [[] for _ in layers]
    ts: list[list[np.ndarray]] = [[] for _ in layers]
    with contextlib.ExitStack() as stack:
        fsess = stack.enter_context(_session(expose(float_model, float_inputs), _CPU, None))
        qsess = None
        if quant_model is not None:
            qsess = stack.enter_context(_session(expose(quant_model, quant_inputs), _CPU, None))
        for b, feeds in enumerate(dataset.batches(batch_size)):
            fvals = _fetch(fsess, float_inputs, feeds, b)
            qvals = _fetch(qsess, quant_inputs, feeds, b) if qsess is not None else fvals
            n = dataset.samples_in(feeds)
            for i, layer in enumerate(layers):
                flat = _sample(layer, fvals[i].shape, n, budgets[i], total, seed, b)
                x_float = gather_rows(layer.geom, fvals[i], flat)
                ts[i].append(_target(layer, x_float))
                xs[i].append(x_float if qsess is None else gather_rows(layer.geom, qvals[i], flat))
    if not xs or not xs[0]:
        raise DataError("AdaRound got no calibration batches", hint="give at least one calibration sample")
    return {layer.node: _shuffled(layer, xs[i], ts[i], seed) for i, layer in enumerate(layers)}


def _quant_inputs(quant_model: onnx.ModelProto, layers: list[Layer]) -> list[str]:
    """Input 0 of each layer's node in the QDQ model (its DequantizeLinear output when quantized)."""
    nodes = {n.name: n for n in quant_model.graph.node}
    return [nodes[layer.node].input[0] for layer in layers]


def _fetch(sess, names: list[str], feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    wanted = list(dict.fromkeys(n for n in names if n not in feeds))
    produced = dict(zip(wanted, sess.run(wanted, feeds), strict=True)) if wanted else {}
    values = [np.asarray(feeds[n] if n in feeds else produced[n], np.float32) for n in names]
    for name, value in zip(names, values, strict=True):
        if not np.isfinite(value).all():
            raise DataError(
                f"tensor {name!r} holds NaN or Inf in calibration batch {batch}",
                hint="check the calibration data; AdaRound cannot fit a layer to non-finite inputs",
            )
    return values


def _sample(layer: Layer, x_shape, n: int, budget: int, total: int, seed: int, batch: int) -> np.ndarray:
    """Sorted flat positions (sample-major) to keep from this batch: its share of the layer's budget."""
    positions = n * positions_per_sample(layer.geom, tuple(x_shape))
    keep = min(positions, max(1, math.ceil(budget * n / max(total, 1))))
    rng = np.random.default_rng((seed, layer.index, batch + 1))
    if keep == positions:
        return np.arange(positions)
    return np.sort(rng.choice(positions, keep, replace=False))


def _target(layer: Layer, x_float: np.ndarray) -> np.ndarray:
    wm = weight_to_matrix(layer.geom, layer.w.astype(np.float32))
    return (layer.geom.alpha * np.matmul(x_float, wm.transpose(0, 2, 1))).astype(np.float32)


def _shuffled(layer: Layer, xs: list[np.ndarray], ts: list[np.ndarray], seed: int) -> LayerRows:
    x, t = np.concatenate(xs, axis=1), np.concatenate(ts, axis=1)
    order = np.random.default_rng((seed, layer.index, 0)).permutation(x.shape[1])
    return LayerRows(x=np.ascontiguousarray(x[:, order]), target=np.ascontiguousarray(t[:, order]))
