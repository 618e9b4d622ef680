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
  ``lazy_batch`` columns, a BLAS product, instead of once per column).

Inputs that never fire (a zero diagonal) get their weights set to zero. Hessians come from the float model
(all layers gathered in one pass over the data), not layer by layer through the already-quantized model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxq.errors import ConfigError
from onnxq.passes._blockwise import BlockFormat, BlockQuant, block_grid, padded_blocks
from onnxq.passes._hessian import weight_pass_inputs
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext


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
    h = np.array(h, np.float64)
    mean_diag = float(np.mean(np.diag(h))) or 1.0
    eye = np.eye(h.shape[0])
    for attempt in range(6):
        try:
            # with J the reversal, J H J = L L^T gives H = R R^T for the upper R = J L J, so H^-1 = R^-T R^-1 and
            # U = R^-1 = J L^-1 J: one Cholesky and one triangular inverse
            lower = np.linalg.cholesky((h + damp * (10**attempt) * mean_diag * eye)[::-1, ::-1])
        except np.linalg.LinAlgError:
            continue
        return np.ascontiguousarray(_lower_inverse(lower)[::-1, ::-1])
    raise np.linalg.LinAlgError("the damped Hessian is not positive definite")


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of a lower-triangular matrix, by halves (BLAS products; numpy has no triangular inverse):
    inv([[A, 0], [C, D]]) = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]."""
    n = lower.shape[0]
    if n <= 128:
        return np.tril(np.linalg.solve(lower, np.eye(n)))  # LU leaves rounding dust above the diagonal
    m = n // 2
    a_inv, d_inv = _lower_inverse(lower[:m, :m]), _lower_inverse(lower[m:, m:])
    out = np.zeros_like(lower)
    out[:m, :m], out[m:, m:] = a_inv, d_inv
    out[m:, :m] = -(d_inv @ lower[m:, :m]) @ a_inv
    return out


def gptq(weight: np.ndarray, h: np.ndarray, fmt: BlockFormat, cfg: GPTQConfig = GPTQConfig()) -> BlockQuant:
    """GPTQ of ``weight`` [K, N] with Hessian ``h`` [K, K]. Works on the weight as [K, N] rows, so that each
    input channel's row and each rank-1 update is contiguous in memory."""
    k, n = weight.shape
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    wk = np.array(weight, np.float32)  # [K, N]
    wk[dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if cfg.act_order else np.arange(k)
    nb = fmt.n_blocks(k)
    if cfg.act_order:
        scale, zero = block_grid(padded_blocks(np.ascontiguousarray(wk.T), fmt), fmt)
    else:
        scale, zero = np.ones((n, nb), np.float32), np.zeros((n, nb), np.int32)
    scale_t, zero_t = np.ascontiguousarray(scale.T), np.ascontiguousarray(zero.T, np.float32)  # [nb, N]
    u = inverse_hessian_factor(h[np.ix_(perm, perm)], cfg.damp).astype(np.float32)
    w = wk[perm]
    q_t = np.empty((k, n), np.uint8)
    lazy = fmt.block * -(-cfg.lazy_batch // fmt.block)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1, err = w[i1:i2].copy(), np.empty((i2 - i1, n), np.float32)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            b = col // fmt.block
            if not cfg.act_order and col % fmt.block == 0:  # the block's grid, from the weights as updated so far
                part = np.ascontiguousarray(w1[i : i + fmt.block].T)
                sb, zb = block_grid(padded_blocks(part, fmt)[:, :1], fmt)
                scale_t[b], zero_t[b] = sb[:, 0], zb[:, 0]
            x, sc, zp = w1[i], scale_t[b], zero_t[b]
            qc = np.clip(np.rint(x / sc) + zp, 0, fmt.qmax)
            q_t[col] = qc
            e = (x - (qc - zp) * sc) / u[i1 + i, i1 + i]
            w1[i + 1 :] -= u[i1 + i, i1 + i + 1 : i2, None] * e
            err[i] = e
        w[i2:] -= u[i1:i2, i2:].T @ err
    scale, zero = np.ascontiguousarray(scale_t.T), np.ascontiguousarray(zero_t.T).astype(np.int32)
    padded = np.repeat(zero, fmt.block, axis=1).astype(np.uint8)
    padded[:, :k] = q_t.T
    return BlockQuant(padded, scale, zero, fmt, k)


def gptq_shared(weights: list[np.ndarray], h: np.ndarray, fmt: BlockFormat, cfg: GPTQConfig) -> list[BlockQuant]:
    """GPTQ of layers that read one input (an attention block's q/k/v, an MLP's gate/up): one Hessian, one
    inverse factor and one column loop for their weights side by side along N. GPTQ treats each output row on
    its own given H, so this equals running :func:`gptq` on each, at a fraction of the Python overhead."""
    if len(weights) == 1:
        return [gptq(weights[0], h, fmt, cfg)]
    both = gptq(np.concatenate(weights, axis=1), h, fmt, cfg)
    out, start = [], 0
    for w in weights:
        rows = slice(start, start + w.shape[1])
        out.append(BlockQuant(both.q[rows], both.scale[rows], both.zero[rows], fmt, both.k))
        start += w.shape[1]
    return out


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: GPTQConfig) -> PassResult:
    import time

    fmt, layers, stats = weight_pass_inputs(model, ctx, "gptq")
    by_input: dict[str, list] = {}
    for layer in layers:
        by_input.setdefault(layer.x, []).append(layer)
    results = {}
    start = time.perf_counter()
    for x, group in by_input.items():
        for layer, bq in zip(group, gptq_shared([g.weight for g in group], stats[x].hessian, fmt, cfg), strict=True):
            results[layer.key] = bq
    ctx.block_weights, ctx.block_algorithm = results, "gptq"
    return PassResult(model, modified=False, details={
        "layers": len(results), "shared_inputs": len(by_input),
        "calib_tokens": max((s.rows for s in stats.values()), default=0),
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
