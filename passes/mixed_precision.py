"""Mixed precision to a target: raise the activations where 8 bits break to 16 bits, by measured benefit.

The QDQ model's fidelity is measured against the float model it was made from (the prepared model the qdq
pass started from), on calibration samples, in ONNX Runtime: the SQNR of each output, and the worst of them
is the score. When the all-8-bit model is below ``target_sqnr_db``, every shared-scale group of activations
is tried alone at 16 bits (uint16 for uint8 activations, int16 for int8, same range; its Conv/Gemm biases then
stay float, since s_x * s_w on a 16-bit grid would saturate int32), and the groups are raised in the order of
the score each gave alone, one more at a time, until the target is met or the evaluations run out. Each
evaluation is a model written by the qdq pass with those groups wide, so the output is exactly what
``onnxq quantize`` writes for that choice. A 16-bit group runs in float on ORT's CPU EP (its integer kernels
take 8 bits): the summary lists each group raised, the score it gave, and the cost in nodes.

The score is measured on the calibration data (the first ``samples`` of it), on which the ranges were also
calibrated: give more samples than ``--calib-samples`` uses, or check the result with ``onnxq eval --data``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxq.errors import ConfigError, PassError
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext


@dataclass(frozen=True)
class MixedPrecisionConfig:
    target_sqnr_db: float = 30.0  # the worst output's SQNR against float the model must reach (--target-sqnr)
    samples: int = 32  # calibration samples the score is measured on
    max_evaluations: int = 400  # models built and run, all steps together

    def __post_init__(self) -> None:
        if not np.isfinite(self.target_sqnr_db) or not 0 <= self.target_sqnr_db <= 200:
            raise ConfigError(
                f"mixed-precision: target_sqnr_db must be between 0 and 200 dB, got {self.target_sqnr_db}",
                hint="give --target-sqnr DB (e.g. 30)",
            )
        if self.samples < 1 or self.max_evaluations < 1:
            raise ConfigError(
                "mixed-precision: samples and max_evaluations must be at least 1",
                hint="e.g. samples 32, max_evaluations 400",
            )


class _Scorer:
    """The worst output SQNR (dB) of a candidate model against the float model, on fixed feeds."""

    def __init__(self, float_model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.reference = self._outputs(float_model)
        self.evaluations = 0

    def _outputs(self, model: onnx.ModelProto) -> list[np.ndarray]:
        from onnxq.runtime.session import internal_session

        sess = internal_session(model)
        runs = [sess.run(None, feed) for feed in self.feeds]
        return [np.concatenate([np.asarray(r[i], np.float64).ravel() for r in runs]) for i in range(len(runs[0]))]

    def __call__(self, model: onnx.ModelProto) -> float:
        self.evaluations += 1
        worst = float("inf")
        for ref, got in zip(self.reference, self._outputs(model), strict=True):
            if not np.isfinite(got).all():
                return float("-inf")
            noise = float(np.sum((ref - got) ** 2))
            if noise > 0:
                worst = min(worst, float(10 * np.log10(max(float(np.sum(ref * ref)), 1e-300) / noise)))
        return worst


def _feeds(ctx: QuantizeContext, samples: int) -> list[dict[str, np.ndarray]]:
    feeds, n = [], 0
    for batch in ctx.calib.batches(ctx.batch_size):
        feeds.append(batch)
        n += ctx.calib.samples_in(batch)
        if n >= samples:
            break
    return feeds


def _groups(ctx: QuantizeContext) -> list[list[str]]:
    """The shared-scale groups of quantized activations (8-bit ones), in the plan's order."""
    members: dict[str, list[str]] = {}
    for t in ctx.plan.tensors:
        members.setdefault(ctx.plan.groups[t], []).append(t)
    return list(members.values())


def _check(ctx: QuantizeContext) -> None:
    from onnxq.passes.qdq import WIDE_TYPES
    from onnxq.quantize.targets import check_choices, get_target

    if ctx.pre_qdq is None or ctx.plan is None or ctx.ranges is None or ctx.calib is None:
        raise PassError("mixed-precision runs after qdq, with calibration data",
                        hint="quantize statically (--calib DATA), not with --dynamic")  # fmt: skip
    if ctx.qdq.activation_type not in WIDE_TYPES:
        raise ConfigError(
            f"mixed-precision raises 8-bit activations to 16 bits; these are {ctx.qdq.activation_type} already",
            hint="drop --target-sqnr, or quantize with 8-bit activations",
        )
    q = ctx.qdq
    check_choices(get_target(q.target), activation_type=q.wide_type, weight_type=q.weight_type,
                  symmetric_activations=q.act_symmetric, symmetric_weights=q.symmetric_weights)  # fmt: skip


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: MixedPrecisionConfig) -> PassResult:
    from onnxq.passes.qdq import write_qdq

    _check(ctx)
    score = _Scorer(ctx.pre_qdq, _feeds(ctx, cfg.samples))

    def build(wide: list[list[str]]) -> onnx.ModelProto:
        qdq = dataclasses.replace(ctx.qdq, wide_tensors=tuple(t for g in wide for t in g))
        return write_qdq(ctx.pre_qdq, ctx, qdq).model

    base = score(model)
    details: dict[str, Any] = {"target_sqnr_db": cfg.target_sqnr_db, "sqnr_db_8bit": round(base, 2),
                               "samples": sum(ctx.calib.samples_in(f) for f in score.feeds)}  # fmt: skip
    if base >= cfg.target_sqnr_db:
        details.update(target_met=True, sqnr_db=round(base, 2), raised_tensors=[], raised={},
                       evaluations=score.evaluations)  # fmt: skip
        return PassResult(model, False, details)
    groups = _groups(ctx)
    alone = []
    for g in groups[: max(cfg.max_evaluations - score.evaluations, 0)]:
        alone.append((score(build([g])), g))
    best_model, best, chosen, steps, kept = model, base, [], [], 0
    for s_alone, g in sorted(alone, key=lambda x: -x[0]):
        if best >= cfg.target_sqnr_db or score.evaluations >= cfg.max_evaluations or s_alone <= base:
            break
        chosen.append(g)
        candidate = build(chosen)
        s = score(candidate)
        steps.append({"tensors": g, "sqnr_db_alone": round(s_alone, 2), "sqnr_db_after": round(s, 2)})
        if s > best:
            best_model, best, kept = candidate, s, len(steps)
    raised = steps[:kept]
    details.update(target_met=bool(best >= cfg.target_sqnr_db), sqnr_db=round(best, 2),
                   raised_tensors=[t for step in raised for t in step["tensors"]], groups=len(groups),
                   groups_tried_alone=len(alone), evaluations=score.evaluations, tried_and_dropped=len(steps) - kept,
                   raised={step["tensors"][0]: step for step in raised})  # fmt: skip
    return PassResult(best_model, best_model is not model, details)


SPEC = PassSpec(
    name="mixed-precision",
    phase=Phase.FORMAT,
    config=MixedPrecisionConfig,
    run=_run,
    summary="16-bit activations where 8 bits break, chosen by measured SQNR until --target-sqnr is met",
    after=("qdq",),
)
