"""The AdaRound optimisation of one layer, in numpy with closed-form gradients (Nagel et al., 2020).

Each weight ``w`` with scale ``s`` and zero point ``z`` is written ``floor(w / s) + h(V)``, where ``h`` is
the rectified sigmoid ``clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` with zeta = 1.1, gamma = -0.1.
The soft-quantized weight is ``s * (clip(floor(w / s) + h(V) + z, qmin, qmax) - z)`` and the loss is

    L(V) = mean over rows of ||alpha * W~(V) x - t||^2  +  lambda * sum(1 - |2 h(V) - 1|^beta)

with ``t`` the float layer's output on the float input (without bias) and ``x`` the layer's input row
(from the partly quantized model, or the float one). The first term is AIMET's reconstruction loss (sum
over output channels, mean over rows); the second pushes every ``h`` to 0 or 1. beta is annealed with a
cosine from ``beta_range[0]`` to ``beta_range[1]`` after a warm start in which only the first term counts.
Adam minimises L on a block of rows per iteration; at the end ``h`` is rounded hard: up where V >= 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnxq.passes._adaround_ops import Geometry, matrix_to_weight, weight_to_matrix

ZETA = 1.1
GAMMA = -0.1


@dataclass
class LayerProblem:
    """One layer's rounding problem. ``scale``/``zero_point`` broadcast against ``w``; ``x`` is
    ``[groups, R, in_per_group]`` and ``target`` ``[groups, R, out_per_group]``."""

    geom: Geometry
    w: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    x: np.ndarray
    target: np.ndarray
    floor: np.ndarray = field(init=False)  # floor(w / s), the grid point below each weight
    rest: np.ndarray = field(init=False)  # w / s - floor(w / s), in [0, 1)
    nearest: np.ndarray = field(init=False)  # rint(w / s), what QuantizeLinear would store (before zp, clip)

    def __post_init__(self) -> None:
        dtype = self.x.dtype
        # the same float32 division as QuantizeLinear, so that floor and ceil bracket its rint exactly
        ratio = (self.w.astype(np.float32) / self.scale.astype(np.float32)).astype(np.float32)
        self.floor = np.floor(ratio).astype(dtype)
        self.rest = (ratio - np.floor(ratio)).astype(dtype)
        self.nearest = np.rint(ratio).astype(dtype)
        self.scale = self.scale.astype(dtype)
        self.zero_point = self.zero_point.astype(dtype)


def rectified_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h(V)`` and ``dh/dV`` (zero where the clip is active)."""
    sig = 1.0 / (1.0 + np.exp(-v))
    raw = sig * (ZETA - GAMMA) + GAMMA
    inside = (raw > 0) & (raw < 1)
    return np.clip(raw, 0, 1), np.where(inside, (ZETA - GAMMA) * sig * (1 - sig), 0).astype(v.dtype)


def initial_v(rest: np.ndarray) -> np.ndarray:
    """V with ``h(V)`` equal to the fractional part ``rest`` (so that W~ starts at the float weight)."""
    return (-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).astype(rest.dtype)


def soft_weight(p: LayerProblem, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W~ for soft rounding ``h`` and ``dW~/dh`` (``s`` where the integer grid is not clipped, else 0)."""
    q = p.floor + h + p.zero_point
    inside = (q >= p.qmin) & (q <= p.qmax)
    w_soft = p.scale * (np.clip(q, p.qmin, p.qmax) - p.zero_point)
    return w_soft, np.where(inside, p.scale, 0).astype(h.dtype)


def reconstruction(p: LayerProblem, w_soft: np.ndarray, rows: slice) -> tuple[float, np.ndarray]:
    """Mean over ``rows`` of the squared output error summed over channels, and its gradient in W~."""
    x, t = p.x[:, rows], p.target[:, rows]
    wm = weight_to_matrix(p.geom, w_soft)
    alpha = p.geom.alpha
    err = alpha * np.matmul(x, wm.transpose(0, 2, 1)) - t  # [g, R, O]
    n = x.shape[1]
    loss = float(np.einsum("gro,gro->", err, err)) / n
    grad_m = (2.0 * alpha / n) * np.matmul(err.transpose(0, 2, 1), x)  # [g, O, K]
    return loss, matrix_to_weight(p.geom, grad_m, p.w.shape)


def rounding_regularizer(h: np.ndarray, beta: float, lam: float) -> tuple[float, np.ndarray]:
    """``lam * sum(1 - |2h - 1|^beta)`` and its gradient in h."""
    d = 2 * h - 1
    a = np.abs(d)
    loss = lam * float(np.sum(1 - a**beta))
    grad = -lam * beta * a ** (beta - 1) * np.sign(d) * 2
    return loss, grad.astype(h.dtype)


def loss_and_grad(
    p: LayerProblem, v: np.ndarray, rows: slice, beta: float | None, lam: float
) -> tuple[float, np.ndarray]:
    """Total loss at V on ``rows`` and dL/dV; ``beta`` None is the warm start (no regularizer)."""
    h, dh_dv = rectified_sigmoid(v)
    w_soft, dw_dh = soft_weight(p, h)
    loss, grad_w = reconstruction(p, w_soft, rows)
    grad_h = grad_w * dw_dh
    if beta is not None:
        reg, grad_reg = rounding_regularizer(h, beta, lam)
        loss += reg
        grad_h = grad_h + grad_reg
    return loss, grad_h * dh_dv


def beta_at(it: int, iterations: int, warm_start: float, beta_range: tuple[float, float]) -> float | None:
    """AIMET's schedule: None during the warm start, then a cosine from beta_range[0] to beta_range[1]."""
    warm = warm_start * iterations
    if it < warm:
        return None
    start, end = beta_range
    rel = (it - warm) / max(iterations - warm, 1)
    return end + 0.5 * (start - end) * (1 + math.cos(rel * math.pi))


class Adam:
    """Plain Adam (Kingma and Ba) on one array, updated in place."""

    def __init__(self, shape: tuple[int, ...], lr: float, dtype: np.dtype) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, 0.9, 0.999, 1e-8
        self.m = np.zeros(shape, dtype)
        self.v = np.zeros(shape, dtype)
        self.t = 0

    def step(self, param: np.ndarray, grad: np.ndarray) -> None:
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        step = self.lr * math.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        param -= (step * self.m / (np.sqrt(self.v) + self.eps)).astype(param.dtype)


def row_blocks(total: int, per_iteration: int) -> list[slice]:
    """Consecutive blocks of ``per_iteration`` rows covering the (already shuffled) rows once."""
    size = max(1, min(per_iteration, total))
    return [slice(i, i + size) for i in range(0, total - size + 1, size)]


def optimize_rounding(
    p: LayerProblem,
    *,
    iterations: int,
    rows_per_iteration: int,
    lam: float,
    beta_range: tuple[float, float],
    warm_start: float,
    learning_rate: float,
    on_step=None,
) -> np.ndarray:
    """Run Adam on V for ``iterations`` steps and return V (round up where V >= 0)."""
    v = initial_v(p.rest)
    adam = Adam(v.shape, learning_rate, v.dtype)
    blocks = row_blocks(p.x.shape[1], rows_per_iteration)
    for it in range(iterations):
        beta = beta_at(it, iterations, warm_start, beta_range)
        _, grad = loss_and_grad(p, v, blocks[it % len(blocks)], beta, lam)
        adam.step(v, grad)
        if on_step is not None:
            on_step()
    return v


def hard_integers(p: LayerProblem, v: np.ndarray | None) -> np.ndarray:
    """The stored integers: ``floor + [V >= 0] + zero_point`` clipped to the type (nearest when V is None)."""
    base = p.nearest if v is None else p.floor + (v >= 0)
    return np.clip(base + p.zero_point, p.qmin, p.qmax).astype(np.int64)


def dequantized(p: LayerProblem, q: np.ndarray) -> np.ndarray:
    """The float weight that integers ``q`` stand for (DequantizeLinear)."""
    return (p.scale * (q - p.zero_point)).astype(p.x.dtype)


def output_mse(p: LayerProblem, w: np.ndarray, chunk: int = 4096) -> float:
    """Mean squared error per output value, over every cached row, of the layer with weight ``w``."""
    wm = weight_to_matrix(p.geom, w).transpose(0, 2, 1)
    total, count = 0.0, 0
    for start in range(0, p.x.shape[1], chunk):
        err = p.geom.alpha * np.matmul(p.x[:, start : start + chunk], wm) - p.target[:, start : start + chunk]
        total += float(np.einsum("gro,gro->", err, err, dtype=np.float64))
        count += err.size
    return total / max(count, 1)
