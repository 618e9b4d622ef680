"""GPTQ (Frantar et al., 2022) for block-wise weight-only quantization, in numpy.

For each linear layer ``y = x @ W`` the Hessian of the layer's output error is ``H = X^T X`` over the
calibration tokens (:mod:`onnxq.passes._hessian`). Columns of ``W^T`` (input channels) are quantized one at a
time, and each column's rounding error is spread over the columns not yet quantized, weighted by the inverse
Hessian, so that ``x @ W`` changes as little as possible on the calibration inputs:

* damping: ``H + damp * mean(diag H) * I`` (raised tenfold while the Cholesky factorisation fails);
* activation order (``act_order``): columns by decreasing ``diag H``; the block grids are then fixed up front
  from the weights (static groups), so the blocks stay contiguous along K, as both output forms store them;
  without it each block's grid is taken when its first column is reached, from the updated weights;
* the upper Cholesky factor of ``H^-1``, and lazy batch updates (the rest of the matrix is updated once per
  ``lazy_batch`` columns, a BLAS product, instead of once per column), nested: inside a lazy batch the
  rank-1 updates reach only the next few (:data:`INNER`) columns, and a product updates the rest of the batch.

Inputs that never fire (a zero diagonal) get their weights set to zero. Hessians come from the float model
(all layers gathered in one pass over the data), not layer by layer through the already-quantized model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxq.errors import ConfigError
from onnxq.passes._blockwise import BlockFormat, BlockQuant, block_grid, padded_blocks
from onnxq.passes._hessian import weight_pass_inputs
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

INNER = 16  # columns per inner batch: rank-1 updates within it, one BLAS product for the rest of the lazy batch


@dataclass(frozen=True)
class GPTQConfig:
    damp: float = 0.01  # fraction of mean(diag H) added to the diagonal
    act_order: bool = True  # quantize input channels by decreasing activation energy
    lazy_batch: int = 128  # columns per lazy batch update (rounded up to a multiple of the block size)

    def __post_init__(self) -> None:
        if not 0 < self.damp < 1:
            raise ConfigError(f"gptq: damp must be in (0, 1), got {self.damp}", hint="the usual value is 0.01")
        if self.lazy_batch < 1:
            raise ConfigError(f"gptq: lazy_batch must be at least 1, got {self.lazy_batch}", hint="use 128")


def inverse_hessian_factor(h: np.ndarray, damp: float) -> np.ndarray:
    """The upper Cholesky factor ``U`` of ``(H + damp*mean(diag H)*I)^-1`` (``U^T U = H^-1``), float64."""
    return _factor_of_reversed(np.array(np.asarray(h)[::-1, ::-1], np.float64), damp, np.float64)


def _factor_of_reversed(rh: np.ndarray, damp: float, dtype: Any) -> np.ndarray:
    """:func:`inverse_hessian_factor` of ``J H J`` (``rh``, float64, damped in place: for a [K, K] Hessian of an
    LLM's down projection every copy is hundreds of MB), as ``dtype``."""
    # with J the reversal, J H J = L L^T gives H = R R^T for the upper R = J L J, so H^-1 = R^-T R^-1 and
    # U = R^-1 = J L^-1 J: the inverse Cholesky factor of the reversed matrix, reversed
    mean_diag = float(np.mean(np.diag(rh))) or 1.0
    diag, added = np.arange(rh.shape[0]), 0.0
    for attempt in range(6):
        target = damp * (10**attempt) * mean_diag
        rh[diag, diag] += target - added  # raised tenfold while the factorisation fails
        added = target
        try:
            inverse = _inverse_cholesky(rh)
        except np.linalg.LinAlgError:
            continue
        return np.ascontiguousarray(inverse[::-1, ::-1], dtype=dtype)
    raise np.linalg.LinAlgError("the damped Hessian is not positive definite")


def _inverse_cholesky(a: np.ndarray) -> np.ndarray:
    """``L^-1`` for the lower Cholesky factor ``L`` of ``a``, by halves with BLAS products (numpy's Cholesky is
    unblocked, and it has no triangular inverse): with ``a = [[A, B^T], [B, C]]``, ``L = [[L1, 0], [M, L2]]``
    where ``L1 L1^T = A``, ``M = B L1^-T`` and ``L2 L2^T = C - M M^T``; ``L^-1 = [[L1^-1, 0], [-L2^-1 M L1^-1,
    L2^-1]]``. Raises LinAlgError when ``a`` is not positive definite."""
    n = a.shape[0]
    if n <= 192:
        lower = np.linalg.cholesky(a)
        return np.tril(np.linalg.solve(lower, np.eye(n)))  # LU leaves rounding dust above the diagonal
    m = n // 2
    inv1 = _inverse_cholesky(a[:m, :m])
    below = a[m:, :m] @ inv1.T
    inv2 = _inverse_cholesky(a[m:, m:] - below @ below.T)
    out = np.zeros_like(a)
    out[:m, :m], out[m:, m:] = inv1, inv2
    out[m:, :m] = -(inv2 @ below) @ inv1
    return out


def gptq(weight: np.ndarray, h: np.ndarray, fmt: BlockFormat, cfg: GPTQConfig = GPTQConfig()) -> BlockQuant:
    """GPTQ of ``weight`` [K, N] with Hessian ``h`` [K, K]."""
    return gptq_stack([weight], [h], fmt, cfg)[0]


def gptq_stack(weights: list[np.ndarray], hs: list[np.ndarray], fmt: BlockFormat, cfg: GPTQConfig
               ) -> list[BlockQuant]:  # fmt: skip
    """GPTQ of layers of one shape [K, N], each with its own Hessian, side by side in a stack: slice for slice
    the arithmetic of one layer at a time, with one Python loop over the columns for all of them (the loop's
    overhead, not its arithmetic, bounds GPTQ on the small layers of an LLM). Works on the weights as [K, N]
    rows, so that each input channel's row and each rank-1 update is contiguous in memory."""
    k, n = weights[0].shape
    nb = fmt.n_blocks(k)
    parts = [_prepared(w, h, fmt, cfg) for w, h in zip(weights, hs, strict=True)]
    w, u, perm = (_stack([p[i] for p in parts]) for i in range(3))  # [L, K, N] (quantization order), [L, K, K], [L, K]
    if cfg.act_order:
        scale_t, zero_t = _stack([p[3] for p in parts]), _stack([p[4] for p in parts])  # [L, nb, N]
    else:
        scale_t, zero_t = np.ones((len(parts), nb, n), np.float32), np.zeros((len(parts), nb, n), np.float32)
    q_t = _columns(w, u, perm, scale_t, zero_t, fmt, cfg)
    out = []
    for q_l, s_l, z_l in zip(q_t, scale_t, zero_t, strict=True):
        scale, zero = np.ascontiguousarray(s_l.T), np.ascontiguousarray(z_l.T).astype(np.int32)
        padded = np.repeat(zero, fmt.block, axis=1).astype(np.uint8)
        padded[:, :k] = q_l.T
        out.append(BlockQuant(padded, scale, zero, fmt, k))
    return out


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)  # one layer: a view, not a copy


def _prepared(weight: np.ndarray, h: np.ndarray, fmt: BlockFormat, cfg: GPTQConfig) -> tuple:
    """One layer's permuted rows [K, N], inverse Hessian factor (float32), permutation and, with act_order, its
    static grids [nb, N]. Inputs that never fire (a zero diagonal) get zero weights and a unit diagonal. One
    copy of the weight and one of the Hessian (permuted) are made, no more."""
    h = np.asarray(h, np.float64)
    dead = np.diag(h) == 0
    diag = np.where(dead, 1.0, np.diag(h))
    k = h.shape[0]
    perm = np.argsort(-diag, kind="stable") if cfg.act_order else np.arange(k)
    backwards = perm[::-1]
    rh = h[np.ix_(backwards, backwards)]  # permuted and reversed in one copy
    rh[np.arange(k), np.arange(k)] = diag[backwards]
    u = _factor_of_reversed(rh, cfg.damp, np.float32)
    del rh
    w = np.asarray(weight, np.float32)[perm]  # [K, N]
    w[dead[perm]] = 0.0
    grid = (None, None)
    if cfg.act_order:
        kept = np.where(dead[:, None], np.float32(0), weight) if dead.any() else weight
        scale, zero = block_grid(padded_blocks(np.ascontiguousarray(np.asarray(kept, np.float32).T), fmt), fmt)
        grid = (np.ascontiguousarray(scale.T), np.ascontiguousarray(zero.T, np.float32))
    return w, u, perm, *grid


def _columns(w: np.ndarray, u: np.ndarray, perm: np.ndarray, scale_t: np.ndarray, zero_t: np.ndarray,
             fmt: BlockFormat, cfg: GPTQConfig) -> np.ndarray:  # fmt: skip
    """The column loop on a stack (``w`` updated in place; without act_order the grids are filled in as each
    block is reached, from the weights updated so far); the codes [L, K, N] in input-channel order."""
    nl, k, n = w.shape
    ar = np.arange(nl)
    q_t = np.empty((nl, k, n), np.uint8)
    lazy, inner = fmt.block * -(-cfg.lazy_batch // fmt.block), math.gcd(INNER, fmt.block)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1, err = w[:, i1:i2].copy(), np.empty((nl, i2 - i1, n), np.float32)
        for j1 in range(0, i2 - i1, inner):  # rank-1 updates inside a few columns, a product for the rest
            j2 = min(j1 + inner, i2 - i1)
            for i in range(j1, j2):
                cols = perm[:, i1 + i]
                b = cols // fmt.block
                if not cfg.act_order and (i1 + i) % fmt.block == 0:  # the grid, from the weights updated so far
                    part = w1[:, i : i + fmt.block].transpose(0, 2, 1)  # [L, N, <= block]
                    part = np.concatenate([part, np.zeros((nl, n, fmt.block - part.shape[2]), np.float32)], axis=2)
                    sb, zb = block_grid(part[:, :, None, :], fmt)
                    scale_t[:, b[0]], zero_t[:, b[0]] = sb[..., 0], zb[..., 0]
                x, sc, zp = w1[:, i], scale_t[ar, b], zero_t[ar, b]
                qc = np.clip(np.rint(x / sc) + zp, 0, fmt.qmax)
                q_t[ar, cols] = qc
                e = (x - (qc - zp) * sc) / u[ar, i1 + i, i1 + i, None]
                w1[:, i + 1 : j2] -= u[:, i1 + i, i1 + i + 1 : i1 + j2, None] * e[:, None, :]
                err[:, i] = e
            w1[:, j2:] -= np.matmul(u[:, i1 + j1 : i1 + j2, i1 + j2 : i2].transpose(0, 2, 1), err[:, j1:j2])
        w[:, i2:] -= np.matmul(u[:, i1:i2, i2:].transpose(0, 2, 1), err)
    return q_t


def gptq_shared(weights: list[np.ndarray], h: np.ndarray, fmt: BlockFormat, cfg: GPTQConfig) -> list[BlockQuant]:
    """GPTQ of layers that read one input (an attention block's q/k/v, an MLP's gate/up)."""
    return gptq_groups([(weights, h)], fmt, cfg)[0]


# layers solved side by side: at most MAX_STACK, and at most STACK_WIDTH output columns in all, so that a rank-1
# update's temporary [layers, INNER, N] stays in cache (measured: 4 layers of [576, 960] 1.3x faster side by side,
# of [576, 3072] 1.7x slower)
MAX_STACK, STACK_WIDTH = 8, 4096


def gptq_groups(groups: list[tuple[list[np.ndarray], np.ndarray]], fmt: BlockFormat, cfg: GPTQConfig
                ) -> list[list[BlockQuant]]:  # fmt: skip
    """GPTQ of several groups (the layers that read one input, with that input's Hessian). A group's weights go
    side by side along N, under one Hessian, one inverse factor and one column loop (GPTQ treats each output
    column on its own given H, so this equals running :func:`gptq` on each); groups of one shape are then
    solved in stacks (:func:`gptq_stack`, sized by :data:`MAX_STACK` and :data:`STACK_WIDTH`). The results,
    group by group."""
    joined = [w[0] if len(w) == 1 else np.concatenate(w, axis=1) for w, _ in groups]
    by_shape: dict[tuple[int, int], list[int]] = {}
    for g, w in enumerate(joined):
        by_shape.setdefault(w.shape, []).append(g)
    solved: dict[int, BlockQuant] = {}
    for (_, n), members in by_shape.items():
        size = max(1, min(MAX_STACK, STACK_WIDTH // n))
        for start in range(0, len(members), size):
            take = members[start : start + size]
            for g, bq in zip(take, gptq_stack([joined[g] for g in take], [groups[g][1] for g in take], fmt, cfg),
                             strict=True):  # fmt: skip
                solved[g] = bq
    out = []
    for g, (weights, _) in enumerate(groups):
        both, start, parts = solved[g], 0, []
        for w in weights:
            rows = slice(start, start + w.shape[1])
            parts.append(BlockQuant(both.q[rows], both.scale[rows], both.zero[rows], fmt, both.k))
            start += w.shape[1]
        out.append(parts)
    return out


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: GPTQConfig) -> PassResult:
    import time

    fmt, layers, stats = weight_pass_inputs(model, ctx, "gptq")
    by_input: dict[str, list] = {}
    for layer in layers:
        by_input.setdefault(layer.x, []).append(layer)
    results = {}
    start = time.perf_counter()
    groups = list(by_input.items())
    for first in range(0, len(groups), 16):  # a few decoder layers at a time: their joined weights and Hessians
        part = groups[first : first + 16]
        solved = gptq_groups([([g.weight for g in group], stats[x].hessian) for x, group in part], fmt, cfg)
        for (_, group), bqs in zip(part, solved, strict=True):
            for layer, bq in zip(group, bqs, strict=True):
                results[layer.key] = bq
    ctx.block_weights, ctx.block_algorithm = results, "gptq"
    return PassResult(model, modified=False, details={
        "layers": len(results), "shared_inputs": len(by_input),
        "calib_tokens": max((s.rows for s in stats.values()), default=0),
        "widest_input": max((s.abs_sum.size for s in stats.values()), default=0),
        "solve_s": round(time.perf_counter() - start, 3), "act_order": cfg.act_order, "damp": cfg.damp})  # fmt: skip


SPEC = PassSpec(
    name="gptq",
    phase=Phase.WEIGHT,
    config=GPTQConfig,
    run=_run,
    summary="GPTQ for weight-only quantization (--algorithm gptq): Hessian-weighted rounding error compensation",
    needs=("calib",),
    provides=("block_weights",),
)
