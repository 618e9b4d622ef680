"""AdaRound: learn, layer by layer, whether each weight rounds up or down (Nagel et al., 2020), in numpy.

Round-to-nearest minimises each weight's own error, not the layer's output error. AdaRound instead
optimises a soft rounding variable per weight so that the layer's output on calibration data is
reconstructed best, then rounds hard (see :mod:`onnxq.passes._adaround_opt` for the loss, its gradients
and the schedule). It handles Conv (1-D, 2-D or more; grouped, depthwise, strided, padded, dilated),
ConvTranspose, Gemm and MatMul with a constant weight (see :mod:`onnxq.passes._adaround_ops`).

The integers it returns use the exact scales and zero points that ``apply_qdq`` writes
(``weight_qparams``), for any weight type and per-channel or per-tensor scales; ``apply_qdq`` stores them
as the quantized initializers feeding DequantizeLinear, so what runs is what was optimised.

The layer's input ``x`` comes, by default, from the *partly quantized* model (AIMET's sequential mode):
the real QDQ model that onnxq writes, built by ``apply_qdq`` with the layers already rounded and the
activations quantized, run in onnxruntime. Running the real graph rather than a numpy simulation keeps
the inputs exactly those the deployed model sees (same kernels, same requantization), at the cost of one
onnxruntime pass over the calibration data per round of layers. ``input="float"`` takes it from the
float model instead. The target is always the float layer's output on the float input, as in AIMET.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.errors import ConfigError, DataError
from onnxq.passes._adaround_data import Layer, collect_rows, layer_rounds
from onnxq.passes._adaround_ops import SUPPORTED_OPS, geometry_of
from onnxq.passes._adaround_opt import LayerProblem, dequantized, hard_integers, optimize_rounding, output_mse
from onnxq.passes.qdq import QDQConfig, QDQPlan, apply_qdq, weight_qparams
from onnxq.progress import Progress
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

INPUTS = ("quantized", "float")


@dataclass(frozen=True)
class AdaRoundConfig:
    """AdaRound's options (``lambda`` is accepted for ``reg_lambda``).

    AIMET runs 10,000 Adam iterations per layer (lr 1e-3, batches of 32 images). The default here is 1,000
    iterations with lr 3e-2, on ``samples_per_iteration`` rows per step (im2col patches, tokens or samples):
    10x fewer steps, each moving V further, so that V still travels from its start to a saturated 0/1
    rounding; on squeezenet1.1 that keeps the whole pass at a few minutes on 2 cores. bench/adaround.py
    measures the choice of learning rate and iterations (bench/results/adaround.md).
    """

    iterations: int = 1000
    samples_per_iteration: int = 1024
    reg_lambda: float = 0.01  # the "lambda" of the paper; the key "lambda" is accepted too
    beta_range: tuple[float, float] = (20.0, 2.0)
    warm_start: float = 0.2
    learning_rate: float = 3e-2
    input: str = "quantized"
    cache_mb: float = 32.0  # rows kept per layer (inputs and targets), whatever the data size
    samples: int | None = None  # calibration samples AdaRound runs the models on (None: all)
    # BLAS threads numpy may use while optimising (None: as numpy is set up). Idle BLAS threads spin, which
    # on 2 shared cores slows onnxruntime's row collection and, when other processes run, the optimisation
    # itself many times over; one thread is about as fast overall on an idle machine and far faster on a
    # busy one ("Choosing the defaults" in bench/results/adaround.md). Needs threadpoolctl; the details
    # say whether the limit was applied.
    blas_threads: int | None = 1
    seed: int = 0
    # a layer keeps round-to-nearest where AdaRound's output MSE on the cached rows is higher (seen at lr 1e-2
    # on small layers whose soft optimum lies between grid points); the details record each such layer
    never_worse: bool = True
    op_types: tuple[str, ...] = SUPPORTED_OPS

    def __post_init__(self) -> None:
        counts = (self.iterations, self.samples_per_iteration, self.samples, self.blas_threads)
        if min(c for c in counts if c is not None) < 1:
            raise ConfigError(
                "adaround: iterations, samples_per_iteration, samples and blas_threads must be at least 1",
                hint='e.g. {"adaround": {"iterations": 1000, "samples_per_iteration": 1024}} (`onnxq passes`)',
            )
        if self.reg_lambda < 0 or self.learning_rate <= 0 or self.cache_mb <= 0:
            raise ConfigError("adaround: lambda must be >= 0; learning_rate and cache_mb must be > 0",
                              hint="the defaults are lambda 0.01, learning_rate 0.03 (`onnxq passes` lists them)")
        if len(self.beta_range) != 2 or min(self.beta_range) < 1:
            raise ConfigError(
                f"adaround: beta_range must be two numbers >= 1 (start, end), got {self.beta_range}",
                hint="the paper anneals from 20 to 2: [20, 2]",
            )
        if not 0 <= self.warm_start < 1:
            raise ConfigError(f"adaround: warm_start is a fraction in [0, 1), got {self.warm_start}",
                              hint="e.g. 0.2 (the default): the first 20% of the iterations keep beta fixed")
        if self.input not in INPUTS:
            raise ConfigError(f"adaround: unknown input {self.input!r}", hint=f"choose one of {', '.join(INPUTS)}")
        unknown = [op for op in self.op_types if op not in SUPPORTED_OPS]
        if unknown:
            raise ConfigError(f"adaround: op types {unknown} are not supported", hint=f"use {SUPPORTED_OPS}")

def find_layers(
    model: onnx.ModelProto, plan: QDQPlan, qcfg: QDQConfig, cfg: AdaRoundConfig
) -> tuple[list[Layer], dict[str, str]]:
    """The planned weights AdaRound can round, and the reason for each one it leaves to nearest rounding."""
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node_name, idx in plan.weights:
        uses[nodes[node_name].input[idx]] = uses.get(nodes[node_name].input[idx], 0) + 1
    layers: list[Layer] = []
    skipped: dict[str, str] = {}
    for node_name, idx in plan.weights:
        node = nodes[node_name]
        wname = node.input[idx]
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)
        reason = _skip_reason(node, idx, uses[wname], cfg)
        geom = geometry_of(node, w.shape) if reason is None else reason
        if isinstance(geom, str):
            skipped[node_name] = geom
            continue
        qp = weight_qparams(w, node, idx, qcfg)
        layers.append(Layer(len(layers), node_name, wname, geom, w, qp, input=node.input[0]))
    return layers, skipped


def _skip_reason(node: onnx.NodeProto, idx: int, uses: int, cfg: AdaRoundConfig) -> str | None:
    if node.op_type not in cfg.op_types:
        return f"{node.op_type} is not in adaround's op_types"
    if idx != 1:
        return f"the constant is input {idx}, not the weight input 1"
    if uses > 1:
        return f"its weight feeds {uses} quantized nodes (one rounding cannot fit them all)"
    return None


def adaround_weights(
    model: onnx.ModelProto,
    plan: QDQPlan,
    qcfg: QDQConfig,
    ranges: dict[str, tuple[float, float]],
    ctx: Any,
    cfg: AdaRoundConfig,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Round every weight of ``plan`` that AdaRound handles; returns ({weight name: integers}, details).

    The integers (in the weight type's storage dtype) go to ``apply_qdq(..., weight_overrides=...)``.
    ``ctx.calib`` is the calibration Dataset; ``model`` is not changed. Details hold, per layer, the output
    MSE on the cached rows with nearest and adaptive rounding, the rows used and the seconds taken.
    """
    if ctx.calib is None:
        raise DataError("AdaRound needs calibration data", hint="pass --calib DATA")
    t0 = time.perf_counter()
    data = ctx.calib.take(cfg.samples) if cfg.samples else ctx.calib
    layers, skipped = find_layers(model, plan, qcfg, cfg)
    overrides: dict[str, np.ndarray] = {}
    per_layer: list[dict[str, Any]] = []
    cache_bytes = int(cfg.cache_mb * (1 << 20))
    collect_s = 0.0
    limit, blas_threads = _blas_limit(cfg.blas_threads)
    with limit:
        for group in layer_rounds(model, layers):
            t = time.perf_counter()
            # sequential: the real QDQ model with the layers rounded so far (the rest are not upstream)
            quant = None
            if cfg.input == "quantized":
                quant = apply_qdq(model, plan, ranges, qcfg, weight_overrides=overrides or None).model
            rows = collect_rows(model, quant, group, data, ctx.batch_size, cache_bytes, cfg.seed)
            collect_s += time.perf_counter() - t
            for layer in group:
                cached = rows.pop(layer.node)
                label = f"adaround layer {len(per_layer) + 1}/{len(layers)} {layer.node}"
                q, record = round_layer(layer, cached.x, cached.target, cfg, ctx.progress, label=label)
                overrides[layer.weight] = q.astype(layer.qparams.qtype.storage)
                per_layer.append(record)
    ratios = [r["mse_final"] / r["mse_nearest"] for r in per_layer if r["mse_nearest"] > 0 and r["mse_final"] > 0]
    details = {
        "layers": len(layers),
        "layers_kept_nearest": sum(r["kept_nearest"] for r in per_layer),
        # geometric mean over layers of (output MSE after AdaRound) / (output MSE with nearest rounding)
        "mse_ratio": round(float(np.exp(np.mean(np.log(ratios)))), 4) if ratios else None,
        "input": cfg.input,
        "iterations": cfg.iterations,
        "samples_per_iteration": cfg.samples_per_iteration,
        "calib_samples": len(data),
        "blas_threads": blas_threads,
        "collect_s": round(collect_s, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "skipped": skipped,
        "per_layer": {r.pop("node"): r for r in per_layer},  # a mapping, so one-line summaries leave it out
    }
    return overrides, details


def _blas_limit(threads: int | None) -> tuple[Any, str]:
    """A context limiting numpy's BLAS threads, and what was applied (for the details)."""
    if threads is None:
        return contextlib.nullcontext(), "as numpy is set up"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), f"not limited to {threads} (threadpoolctl is not installed)"
    return threadpool_limits(limits=threads, user_api="blas"), str(threads)


def round_layer(
    layer: Layer, x: np.ndarray, target: np.ndarray, cfg: AdaRoundConfig, progress: bool = False, *, label: str = ""
) -> tuple[np.ndarray, dict[str, Any]]:
    """AdaRound one layer on cached rows ``x`` / ``target``; returns (integers, a record for the details).
    ``label`` names the layer on the progress bar (``adaround layer 3/26 conv3``)."""
    t = time.perf_counter()
    scale, zp = _broadcast(layer)
    qt = layer.qparams.qtype
    problem = LayerProblem(layer.geom, layer.w, scale, zp, qt.qmin, qt.qmax, x, target)
    with Progress(label or f"adaround {layer.node}", cfg.iterations, enabled=progress, unit="iterations") as bar:
        v = optimize_rounding(
            problem,
            iterations=cfg.iterations,
            rows_per_iteration=cfg.samples_per_iteration,
            lam=cfg.reg_lambda,
            beta_range=cfg.beta_range,
            warm_start=cfg.warm_start,
            learning_rate=cfg.learning_rate,
            on_step=lambda: bar.update(1),
        )
    nearest = hard_integers(problem, None)
    q = hard_integers(problem, v)
    mse_nearest = output_mse(problem, dequantized(problem, nearest))
    mse_adaround = output_mse(problem, dequantized(problem, q))
    kept_nearest = cfg.never_worse and mse_adaround > mse_nearest
    record = {
        "node": layer.node,
        "weight": layer.weight,
        "op_type": layer.geom.op_type,
        "rows": int(x.shape[1]),
        "mse_nearest": mse_nearest,
        "mse_adaround": mse_adaround,
        "kept_nearest": bool(kept_nearest),
        "mse_final": mse_nearest if kept_nearest else mse_adaround,
        "changed_fraction": round(float(np.mean(q != nearest)), 4),
        "seconds": round(time.perf_counter() - t, 3),
    }
    return (nearest if kept_nearest else q), record


def _broadcast(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point shaped to broadcast against the weight (per channel on the qparams' axis)."""
    qp = layer.qparams
    if qp.axis is None:
        return np.asarray(qp.scale, np.float32), np.asarray(qp.zero_point, np.float32)
    shape = [1] * layer.w.ndim
    shape[qp.axis] = -1
    return qp.scale.reshape(shape).astype(np.float32), qp.zero_point.reshape(shape).astype(np.float32)


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: AdaRoundConfig) -> PassResult:
    """The model is left as it is: the rounded integers go to the QDQ pass through ``ctx.weight_overrides``."""
    overrides, details = adaround_weights(model, ctx.plan, ctx.qdq, ctx.ranges, ctx, cfg)
    ctx.weight_overrides = {**(ctx.weight_overrides or {}), **overrides}
    return PassResult(model, modified=False, details=details)


SPEC = PassSpec(
    name="adaround",
    phase=Phase.WEIGHT,
    config=AdaRoundConfig,
    run=_run,
    summary="adaptive rounding of Conv/ConvTranspose/Gemm/MatMul weights, layer by layer, in numpy",
    needs=("calib", "qdq", "plan", "ranges"),
    provides=("weight_overrides",),
    aliases={"lambda": "reg_lambda"},
)
