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
from onnxq.passes._blockwise import BlockFormat, BlockQuant, block_grid, padded_blocks, quantize_with
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
            lower = np.linalg.cholesky(h + damp * (10**attempt) * mean_diag * eye)
            inv_lower = np.linalg.solve(lower, eye)
            return np.linalg.cholesky(inv_lower.T @ inv_lower).T
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("the damped Hessian is not positive definite")


def gptq(weight: np.ndarray, h: np.ndarray, fmt: BlockFormat, cfg: GPTQConfig = GPTQConfig()) -> BlockQuant:
    """GPTQ of ``weight`` [K, N] with Hessian ``h`` [K, K]."""
    k, n = weight.shape
    w = np.array(weight.T, np.float32)  # [N, K]
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if cfg.act_order else np.arange(k)
    scale, zero = block_grid(padded_blocks(w, fmt), fmt) if cfg.act_order else (None, None)
    u = inverse_hessian_factor(h[np.ix_(perm, perm)], cfg.damp).astype(np.float32)
    w = w[:, perm]
    q = np.empty((n, k), np.uint8)
    lazy = fmt.block * -(-cfg.lazy_batch // fmt.block)
    nb = fmt.n_blocks(k)
    if scale is None:
        scale, zero = np.ones((n, nb), np.float32), np.zeros((n, nb), np.int32)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1, err = w[:, i1:i2].copy(), np.zeros((n, i2 - i1), np.float32)
        for i in range(i2 - i1):
            col = perm[i1 + i]
            b = col // fmt.block
            if not cfg.act_order and col % fmt.block == 0:  # the block's grid, from the weights as updated so far
                part = w1[:, i : i + fmt.block]
                scale[:, b], zero[:, b] = (a[:, 0] for a in block_grid(padded_blocks(part, fmt)[:, :1], fmt))
            qc = quantize_with(w1[:, i : i + 1], scale[:, b], zero[:, b], fmt)[:, 0]
            q[:, col] = qc
            e = (w1[:, i] - (qc.astype(np.float32) - zero[:, b]) * scale[:, b]) / u[i1 + i, i1 + i]
            w1[:, i:] -= np.outer(e, u[i1 + i, i1 + i : i2])
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    padded = np.repeat(zero, fmt.block, axis=1).astype(np.uint8)
    padded[:, :k] = q
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
