"""Second moments of linear layers' inputs on the calibration data, for GPTQ and AWQ.

For each input tensor ``x`` of a MatMul/Gemm with a constant weight (flattened to [tokens, K]) this gathers
``X^T X`` (float64, [K, K]), ``sum |x|`` per input channel and the token count, a few batches at a time: the
activations are used and dropped, so memory holds the model, a few batches' exposed tensors and the [K, K] sums.
A tensor read by several layers (the q/k/v projections of one attention block) is gathered once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxq.errors import ConfigError, DataError, PassError
from onnxq.passes._graph import has_subgraphs, needed_nodes
from onnxq.passes.dynamic import linear_weight

PENDING_ROWS, PENDING_BYTES = 1024, 4 << 20  # batches are held until either is reached, then added in one product


CAPTURE_ROWS = 1024  # rows (tokens) of a layer input per capture run, by default


def capture_batch_size(dataset: Any, asked: int | None) -> int:
    """The batch size of GPTQ's and AWQ's capture runs: ``asked`` when given, else the graph's fixed batch, else
    as many samples as make about :data:`CAPTURE_ROWS` rows (an LLM's windows of 256 tokens: 4; SmolLM2's
    streamed GPTQ takes 20 s instead of 25 s at 4), judged from the first batched input's elements per sample."""
    if asked is not None or dataset.fixed_batch_size():
        return dataset.check_batch_size(asked)
    first = next(dataset.batches(1))
    for name, axis in dataset.axes.items():
        if axis is not None and name in first:
            per_sample = max(1, int(np.prod(np.shape(first[name]))) // max(1, dataset.samples_in(first)))
            return dataset.check_batch_size(max(1, min(len(dataset), CAPTURE_ROWS // per_sample)))
    return dataset.check_batch_size(None)


def few_tokens_warning(passes: list[dict]) -> list[str]:
    """The warning for a GPTQ or AWQ run whose calibration tokens are fewer than its widest layer input's
    channels: those inputs' Hessians are rank-deficient, and the solve fits the calibration data's span only."""
    out = []
    for entry in passes:
        rows, widest = entry.get("calib_tokens"), entry.get("widest_input")
        if entry.get("pass") in ("gptq", "awq") and rows is not None and widest and rows < widest:
            out.append(f"{entry['pass']}: {rows} calibration tokens for layer inputs of up to {widest} channels: "
                       "their Hessians are rank-deficient, and the result can be worse than round-to-nearest off "
                       f"the calibration data; give at least {widest} tokens (more or longer windows), ideally "
                       "several times that")  # fmt: skip
    return out


def gram(x: np.ndarray) -> np.ndarray:
    """``x^T x`` for ``x`` [rows, K] float32. From K = 1024 on, as the upper blocks of a 3x3 or 4x4 split mirrored
    (about 6/10 of the products; measured 1.5x faster at K = 1536 on 2 cores, 2.8x at K = 5632, where one
    product of the whole is slower than its blocks); below that, one product."""
    k = x.shape[1]
    parts = 1 if k < 1024 else min(4, max(3, round(k / 512)))
    if parts == 1:
        return x.T @ x
    edges = np.linspace(0, k, parts + 1).astype(int)
    cols = [np.ascontiguousarray(x[:, a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    out = np.empty((k, k), np.float32)
    for i in range(parts):
        for j in range(i, parts):
            block = cols[i].T @ cols[j]
            out[edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = block
            if j > i:
                out[edges[j] : edges[j + 1], edges[i] : edges[i + 1]] = block.T
    return out


@dataclass
class InputStats:
    """``X^T X``, ``sum |x|`` per channel and the number of rows (tokens) seen, for one tensor. Batches wait in
    ``pending`` until :data:`PENDING_ROWS` rows or :data:`PENDING_BYTES` bytes: one [rows, K] product is up to
    3x faster than several small ones (each writes the whole [K, K] result), and the float64 sum is added once."""

    xtx: np.ndarray
    abs_sum: np.ndarray
    rows: int = 0
    pending: list = field(default_factory=list)

    def add(self, x: np.ndarray) -> None:
        self.pending.append(x)
        waiting = sum(p.shape[0] for p in self.pending)
        if waiting >= PENDING_ROWS or waiting * x.shape[1] * 4 >= PENDING_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        x = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending = []
        self.xtx += gram(x).astype(np.float64)
        self.abs_sum += np.abs(x).sum(axis=0, dtype=np.float64)
        self.rows += x.shape[0]

    @property
    def hessian(self) -> np.ndarray:
        """``X^T X / rows``: the mean second moment (GPTQ's Hessian up to the factor 2)."""
        self.flush()
        return self.xtx / max(self.rows, 1)

    def take_hessian(self) -> np.ndarray:
        """:attr:`hessian` made from the sums in place (no [K, K] copy); the statistics are spent after it."""
        self.flush()
        h, self.xtx = self.xtx, None
        h /= max(self.rows, 1)
        return h

    @property
    def mean_abs(self) -> np.ndarray:
        self.flush()
        return self.abs_sum / max(self.rows, 1)


@dataclass
class LinearLayer:
    """A MatMul/Gemm node with a constant weight: its key (node name), input tensor and weight [K, N]."""

    key: str
    node: onnx.NodeProto
    x: str
    weight: np.ndarray


def linear_layers(model: onnx.ModelProto, left_out: Callable[[onnx.NodeProto], Any] | None) -> list[LinearLayer]:
    """The MatMul/Gemm nodes with a constant float weight that are not left out, in graph order."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        weight = linear_weight(node, inits)
        if isinstance(weight, np.ndarray) and not (left_out and left_out(node)):
            out.append(LinearLayer(node.name or node.output[0], node, node.input[0], weight))
    return out


def weight_pass_inputs(model: onnx.ModelProto, ctx: Any, what: str) -> tuple[Any, list[LinearLayer], dict]:
    """What GPTQ and AWQ start from: the weight-only grid, the layers to quantize and their input statistics."""
    if ctx.block_format is None:
        raise ConfigError(f"{what} quantizes weights block-wise for weight-only quantization",
                          hint=f"use it with --weight-only int4 (--algorithm {what})")  # fmt: skip
    layers = linear_layers(model, ctx.qdq.left_out if ctx.qdq else None)
    return ctx.block_format, layers, collect_input_stats(model, ctx, [layer.x for layer in layers], what)


def collect_input_stats(model: onnx.ModelProto, ctx: Any, tensors: list[str], what: str) -> dict[str, InputStats]:
    """:class:`InputStats` of ``tensors`` over ``ctx.calib`` (batches of ``ctx.batch_size``)."""
    from onnxq.progress import Progress
    from onnxq.runtime.session import internal_session

    if ctx.calib is None:
        raise DataError(f"{what} needs calibration data", hint="pass --calib DATA (token windows for an LLM)")
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    names = list(dict.fromkeys(tensors))
    # only the layers' inputs are outputs: ORT then leaves out what feeds nothing else (an LLM's lm_head
    # product, a fifth of SmolLM2's forward pass, and the present key/value outputs)
    del augmented.graph.output[:]
    for name in names:
        augmented.graph.output.add().name = name
    _prune_to_outputs(augmented.graph)
    try:
        sess = internal_session(augmented)
    except Exception as exc:
        raise PassError(f"{what}: onnxruntime cannot load the model with the layers' inputs exposed: "
                        f"{str(exc).strip().splitlines()[0]}", hint="check that the float model runs in "
                        "onnxruntime; this is likely an onnxq bug") from exc  # fmt: skip
    del augmented
    stats: dict[str, InputStats] = {}
    with Progress(f"{what}: layer inputs", len(ctx.calib), enabled=ctx.progress) as bar:
        for feeds in ctx.calib.batches(ctx.batch_size):
            for name, value in zip(names, sess.run(names, feeds), strict=True):
                accumulate(stats, name, np.asarray(value))
            bar.update(ctx.calib.samples_in(feeds))
    return stats


def _prune_to_outputs(graph: onnx.GraphProto) -> None:
    """Drop the nodes no graph output depends on (ORT computes a node whose outputs nothing reads). Graphs with
    subgraphs are left whole: their bodies read outer names that this walk does not follow."""
    if has_subgraphs(graph):
        return
    kept = needed_nodes(graph, {o.name for o in graph.output})
    if len(kept) < len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def accumulate(stats: dict[str, InputStats], name: str, value: np.ndarray) -> None:
    """Add one batch's values of the layer input ``name`` to its :class:`InputStats`."""
    x = value.reshape(-1, value.shape[-1]).astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise PassError(f"the layer input {name!r} holds NaN or Inf on the calibration data",
                        hint="check the float model on this data (onnxq eval)")  # fmt: skip
    s = stats.get(name)
    if s is None:
        k = x.shape[1]
        s = stats[name] = InputStats(np.zeros((k, k), np.float64), np.zeros(k, np.float64))
    s.add(x)
