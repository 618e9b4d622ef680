"""AWQ (Lin et al., 2023) for block-wise weight-only quantization, in numpy.

The layers that read one input tensor ``x`` (an attention block's q/k/v projections, an MLP's gate and up)
share a per-input-channel scale ``s``: the weights become ``diag(s) W`` and the input ``x / s``, which keeps the
float function and lets the channels that carry large activations keep more precision. ``s = mean|x|^alpha``
(normalised), with ``alpha`` searched on a grid by the layers' output error on the calibration data,
``tr(E^T H E)`` with ``E`` the dequantized-minus-float weights and ``H = X^T X`` (:mod:`onnxq.passes._hessian`;
the search scores a seeded subset of the output columns, which every candidate shares). Then a clipping
search picks, per block, the shrink of the grid's range with the least error on the block's part of ``H``.

``1 / s`` is folded into the Mul by a constant that produces ``x`` (RMSNorm/LayerNorm's scale) when every
reader of ``x`` is in the group; otherwise a Mul by ``1 / s`` is inserted before the group's layers. Groups
whose best ``alpha`` is 0 are left unscaled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.errors import ConfigError
from onnxq.passes._blockwise import BlockFormat, block_grid, padded_blocks, quantize_with, rtn
from onnxq.passes._graph import all_tensor_names, graph_output_names, readers, unique_name
from onnxq.passes._hessian import InputStats, LinearLayer, weight_pass_inputs
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext


@dataclass(frozen=True)
class AWQConfig:
    alpha_grid: int = 20  # alphas 0, 1/grid, ..., (grid-1)/grid
    clip_grid: int = 10  # range shrinks 1, 1 - max_shrink/grid, ...; 0 turns the clipping search off
    max_shrink: float = 0.5
    search_columns: int = 128  # output columns per layer that score the alpha search
    insert_mul: bool = True  # scale groups whose input no constant Mul produces, with an inserted Mul
    seed: int = 0

    def __post_init__(self) -> None:
        if self.alpha_grid < 1 or self.clip_grid < 0 or self.search_columns < 1:
            raise ConfigError("awq: alpha_grid and search_columns must be at least 1, clip_grid at least 0",
                              hint="the defaults are alpha_grid 20, clip_grid 10, search_columns 128")  # fmt: skip
        if not 0 <= self.max_shrink < 1:
            raise ConfigError(f"awq: max_shrink must be in [0, 1), got {self.max_shrink}", hint="use 0.5")


def output_error(w: np.ndarray, wq: np.ndarray, h: np.ndarray) -> float:
    """``tr(E^T H E)`` for ``E = wq - w`` [K, N]: the summed squared output error over the calibration rows."""
    e = (wq - w).astype(np.float64)
    return float(np.sum((h @ e) * e))


def search_scale(
    group: list[LinearLayer], st: InputStats, fmt: BlockFormat, cfg: AWQConfig
) -> tuple[float, np.ndarray]:
    """The best ``alpha`` and its scale ``s`` [K] for the layers of ``group``."""
    rng = np.random.default_rng(cfg.seed)
    h = st.hessian
    mean_abs = np.maximum(st.mean_abs, 1e-8)
    cols = [np.sort(rng.choice(g.weight.shape[1], min(cfg.search_columns, g.weight.shape[1]), replace=False))
            for g in group]  # fmt: skip
    ws = [g.weight[:, c].astype(np.float32) for g, c in zip(group, cols, strict=True)]
    best = (np.inf, 0.0, np.ones_like(mean_abs))
    for i in range(cfg.alpha_grid):
        alpha = i / cfg.alpha_grid
        s = mean_abs**alpha
        s = np.clip(s / np.sqrt(s.max() * s.min()), 1e-4, None).astype(np.float32)
        err = sum(output_error(w, rtn((w * s[:, None]).T, fmt).dequantize() / s[:, None], h) for w in ws)
        if err < best[0]:
            best = (err, alpha, s)
    return best[1], best[2]


def search_clip(w: np.ndarray, h: np.ndarray, fmt: BlockFormat, cfg: AWQConfig) -> np.ndarray:
    """Per block of ``w`` [K, N], the range ratio with the least error on that block's diagonal part of ``h``."""
    blocks = padded_blocks(w.T.astype(np.float32), fmt)  # [N, nb, block]
    n, nb, bs = blocks.shape
    k = w.shape[0]
    hp = np.zeros((nb * bs, nb * bs))
    hp[:k, :k] = h
    hb = np.stack([hp[b * bs : (b + 1) * bs, b * bs : (b + 1) * bs] for b in range(nb)]).astype(np.float32)
    best_err = np.full((n, nb), np.inf, np.float32)
    best = np.ones((n, nb), np.float32)
    for i in range(cfg.clip_grid):
        ratio = 1.0 - cfg.max_shrink * i / cfg.clip_grid
        scale, zero = block_grid(blocks, fmt, ratio)
        e = ((quantize_with(blocks, scale, zero, fmt).astype(np.float32) - zero[..., None]) * scale[..., None]) - blocks
        et = e.transpose(1, 0, 2)  # [nb, N, bs]
        err = np.sum((et @ hb) * et, axis=2).T  # [N, nb]
        better = err < best_err
        best_err[better], best[better] = err[better], ratio
    return best


def _group_by_input(layers: list[LinearLayer]) -> dict[str, list[LinearLayer]]:
    groups: dict[str, list[LinearLayer]] = {}
    for layer in layers:
        groups.setdefault(layer.x, []).append(layer)
    return groups


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: AWQConfig) -> PassResult:
    fmt, layers, stats = weight_pass_inputs(model, ctx, "awq")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewriter = _Rewriter(out.graph)
    results, alphas, start = {}, {}, time.perf_counter()
    for x, group in _group_by_input(layers).items():
        st = stats[x]
        alpha, s = search_scale(group, st, fmt, cfg)
        if alpha and not rewriter.scale_input(x, group, s, cfg.insert_mul):
            alpha, s = 0.0, np.ones_like(s)
        alphas[x] = alpha
        h = st.hessian / np.outer(s, s)  # the second moment of x / s
        for layer in group:
            w = (layer.weight * s[:, None]).astype(np.float32)
            ratio = search_clip(w, h, fmt, cfg) if cfg.clip_grid else 1.0
            results[layer.key] = rtn(w.T, fmt, ratio)
            rewriter.set_weight(layer, w)
    ctx.block_weights, ctx.block_algorithm = results, "awq"
    scaled = [a for a in alphas.values() if a]
    return PassResult(out, modified=bool(scaled), details={
        "layers": len(results), "groups": len(alphas), "groups_scaled": len(scaled),
        "folded": rewriter.folded, "muls_inserted": rewriter.inserted,
        "mean_alpha": round(float(np.mean(scaled)), 3) if scaled else 0.0,
        "calib_tokens": max((s.rows for s in stats.values()), default=0),
        "widest_input": max((s.abs_sum.size for s in stats.values()), default=0),
        "search_s": round(time.perf_counter() - start, 3)})  # fmt: skip


class _Rewriter:
    """Edits to the copied graph: a scaled weight per layer, ``1/s`` folded into a constant Mul or inserted."""

    def __init__(self, graph: onnx.GraphProto, read=numpy_helper.to_array) -> None:
        self.g, self.read = graph, read  # read: a tensor's values (the streamed path reads external data)
        self.inits = {t.name: t for t in graph.initializer}
        self.readers = readers(graph)
        self.producers = {o: n for n in graph.node for o in n.output}
        self.outputs = graph_output_names(graph)
        self.taken = all_tensor_names(graph) | {n.name for n in graph.node}
        self.folded = self.inserted = 0

    def set_weight(self, layer: LinearLayer, w: np.ndarray) -> None:
        node = next(n for n in self.g.node if (n.name or n.output[0]) == layer.key)
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        name = unique_name(f"{node.input[1]}_awq", self.taken)
        self.g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T if transposed else w), name))
        node.input[1] = name

    def can_scale(self, x: str, keys: set[str], s: np.ndarray, insert: bool) -> bool:
        """Whether :meth:`scale_input` would succeed for the layers ``keys`` reading ``x``."""
        return insert or self._fold_target(x, keys, s) is not None

    def scale_input(self, x: str, group: list[LinearLayer], s: np.ndarray, insert: bool) -> bool:
        """Make the group's layers read ``x / s``; False when that cannot be done (and nothing changed)."""
        keys = {layer.key for layer in group}
        target = self._fold_target(x, keys, s)
        if target is not None:
            node, i, c = target
            new = (np.broadcast_to(c.reshape(-1), s.shape) / s).astype(np.float32)
            name = unique_name(f"{node.input[i]}_awq", self.taken)
            self.g.initializer.append(numpy_helper.from_array(new.reshape((1,) * max(c.ndim - 1, 0) + (-1,)), name))
            node.input[i] = name
            self.folded += 1
            return True
        if not insert:
            return False
        inv = unique_name(f"{x}_awq_inverse_scale", self.taken)
        y = unique_name(f"{x}_awq_scaled", self.taken)
        self.g.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        mul = helper.make_node("Mul", [x, inv], [y], name=unique_name(f"{x}_awq_Mul", self.taken))
        first = min(i for i, n in enumerate(self.g.node) if (n.name or n.output[0]) in keys)
        self.g.node.insert(first, mul)
        for node in self.g.node:
            if (node.name or node.output[0]) in keys:
                node.input[0] = y
        self.inserted += 1
        return True

    def _fold_target(self, x: str, keys: set[str], s: np.ndarray) -> tuple[onnx.NodeProto, int, np.ndarray] | None:
        """The Mul that makes ``x``, its constant operand's index and values, when ``1/s`` can be folded there: the
        group's layers are ``x``'s only readers, and the constant broadcasts along the last axis only."""
        only_group = x not in self.outputs and all((r.name or r.output[0]) in keys for r in self.readers.get(x, []))
        node = self.producers.get(x)
        if not only_group or node is None or node.op_type != "Mul" or len(node.input) != 2:
            return None
        const = [i for i, name in enumerate(node.input) if name in self.inits]
        if len(const) != 1:
            return None
        c = self.read(self.inits[node.input[const[0]]])
        if c.dtype != np.float32 or c.size not in (1, s.size) or (c.size == s.size and c.shape[-1] != s.size):
            return None
        return node, const[0], c


SPEC = PassSpec(
    name="awq",
    phase=Phase.WEIGHT,
    config=AWQConfig,
    run=_run,
    summary="AWQ for weight-only quantization (--algorithm awq): activation-aware channel scales and clipping",
    needs=("calib",),
    provides=("block_weights",),
)
