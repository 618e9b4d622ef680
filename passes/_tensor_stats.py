"""Statistics of intermediate tensors over a data set, one batch at a time (for CLE and bias correction).

The requested tensors become extra outputs of a copy of the model, which onnxruntime runs with graph
optimizations off (so the numbers are those of the graph as written); each batch is reduced at once and
dropped, so memory holds one batch plus the running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from onnxq.errors import DataError, PassError


def _session(model: onnx.ModelProto, names: Sequence[str]) -> Any:
    from onnxq.runtime.session import internal_session  # lazily: importing onnxq.passes must stay cheap

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    for name in dict.fromkeys(names):
        if name not in existing:
            augmented.graph.output.add().name = name  # untyped: onnxruntime infers it
    try:
        return internal_session(augmented, optimization="disable")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PassError(
            f"onnxruntime cannot load the model with its intermediate tensors exposed: {first}",
            hint="check that the float model runs in onnxruntime; this is likely an onnxq bug",
        ) from exc


def _batches(dataset: Any, batch_size: int | None, samples: int | None):
    if samples is not None and hasattr(dataset, "take") and samples < len(dataset):
        dataset = dataset.take(samples)
    yield from dataset.batches(batch_size)


def _run_all(model, dataset, names, batch_size, samples, reduce) -> int:
    """Run ``model`` over ``dataset``; call ``reduce(name, value)`` per tensor; return the sample count."""
    names = list(dict.fromkeys(names))
    sess = _session(model, names)
    count = 0
    for i, feeds in enumerate(_batches(dataset, batch_size, samples)):
        try:
            values = sess.run(names, feeds)
        except Exception as exc:
            raise DataError(
                f"onnxruntime failed on batch {i}: {str(exc).strip().splitlines()[0]}",
                hint="check the data's shapes against the model's inputs (`onnxq inspect MODEL`)",
            ) from exc
        for name, value in zip(names, values, strict=True):
            if not np.isfinite(value).all():
                raise DataError(
                    f"tensor {name!r} holds NaN or Inf in batch {i}",
                    hint="check the data; the float model itself produces non-finite values on it",
                )
            reduce(name, value)
        count += dataset.samples_in(feeds)
    if count == 0:
        raise DataError("the data yielded no batches", hint="give at least one sample")
    return count


def channel_stats(
    model: onnx.ModelProto,
    dataset: Any,
    channel_axes: dict[str, int],
    *,
    batch_size: int | None = None,
    samples: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-channel ``min``, ``mean`` and ``std`` (float64) of each named tensor (``{name: channel axis}``)
    over the data set, and ``count``, the number of values each channel saw."""
    acc: dict[str, dict[str, Any]] = {}

    def reduce(name: str, value: np.ndarray) -> None:
        axis = channel_axes[name] % value.ndim
        v = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1).astype(np.float64)
        a = acc.setdefault(name, {"min": np.full(v.shape[0], np.inf), "sum": 0.0, "sq": 0.0, "n": 0})
        a["min"] = np.minimum(a["min"], v.min(axis=1))
        a["sum"] = a["sum"] + v.sum(axis=1)
        a["sq"] = a["sq"] + np.square(v).sum(axis=1)
        a["n"] += v.shape[1]

    _run_all(model, dataset, list(channel_axes), batch_size, samples, reduce)
    out = {}
    for name, a in acc.items():
        mean = a["sum"] / a["n"]
        var = np.maximum(a["sq"] / a["n"] - np.square(mean), 0.0)
        out[name] = {"min": a["min"], "mean": mean, "std": np.sqrt(var), "count": a["n"]}
    return out


def mean_maps(
    model: onnx.ModelProto,
    dataset: Any,
    names: Sequence[str],
    *,
    batch_size: int | None = None,
    samples: int | None = None,
    keep_positions: dict[str, bool] | None = None,
) -> dict[str, np.ndarray]:
    """The mean over samples of each named tensor, in float64.

    With ``keep_positions[name]`` True (the default) the mean keeps every axis but the batch axis (a
    [C, H, W] map for a Conv input, so that padding is accounted for exactly); False averages every axis
    but the last (a [K] vector, for Gemm and MatMul inputs of any rank).
    """
    from onnxq.quantize.calibrate import RunningMeans  # the accumulator calibration uses for the same means

    keep = keep_positions or {}
    means = RunningMeans({n: keep.get(n, True) for n in names}, checked=set(names))  # _run_all checks NaN/Inf
    _run_all(model, dataset, names, batch_size, samples, lambda name, value: means.add(name, value, 0))
    return means.result()


def verify_feeds(model: onnx.ModelProto, ctx: Any) -> dict[str, np.ndarray]:
    """ctx.calib's first batch, or (without data) random inputs of the model's shapes."""
    from onnxq.data import input_specs, random_feeds

    calib = getattr(ctx, "calib", None)
    batch_size = getattr(ctx, "batch_size", 1) or 1
    if calib is not None:
        return next(iter(calib.batches(batch_size)))
    try:
        return random_feeds(input_specs(model), batch_size=batch_size)
    except DataError as exc:
        raise PassError(
            f"--verify needs inputs to run the model on; random ones cannot be made: {exc.message}",
            hint="give calibration data, whose first batch is then used for the check",
        ) from exc


def run_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """The graph outputs of ``model`` on ``feeds`` (onnxruntime, optimizations off), by name."""
    sess = _session(model, [])
    names = [o.name for o in sess.get_outputs()]
    try:
        return dict(zip(names, sess.run(names, feeds), strict=True))
    except Exception as exc:
        raise PassError(
            f"--verify: onnxruntime cannot run {what}: {str(exc).strip().splitlines()[0]}",
            hint="check that the data matches the model's inputs",
        ) from exc
