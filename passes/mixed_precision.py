"""Mixed precision to a target: leave float (or raise to 16 bits) what 8 bits break, by measured benefit.

The QDQ model's fidelity is measured against the float model it was made from (the prepared model the qdq
pass started from), on calibration samples, in ONNX Runtime: the SQNR of each output, and the worst of them
is the score. When the all-8-bit model is below ``target_sqnr_db``, each candidate is tried alone: with
``raise_to`` float (the default), each quantized node left float (the plan made again without it, so its
inputs lose their Q/DQ pairs where nothing else reads them quantized); with int16, each shared-scale group of
activations at 16 bits (uint16 for uint8 activations, int16 for int8, same range). Then, in the order of the
score each gave alone, each candidate is added to the ones kept, and kept only if the score rises (a second
broken tensor gains nothing alone while the first is broken, so none is passed over for that), until the
target is met or the evaluations run out. Each evaluation is a model written by the qdq pass, so the output
is exactly what ``onnxq quantize`` writes for that choice. The summary lists what was raised, the score each
gave alone and the score after it was added. Latency is not part of the choice yet.

Why float is the default: ORT's CPU EP (1.32) has no 16-bit integer kernels, and its graph optimiser rewrites
a MatMul/Gemm behind a 16-bit DequantizeLinear (it quantizes a float weight itself, and runs DequantizeLinear
(int8 weight) -> MatMul as MatMulNBits at accuracy level 4, which requantizes the input to int8 per block):
measured on a two-layer test model, an all-16-bit QDQ graph that computes 44 dB gives 19 dB in a default ORT
session, 44 dB with ``session.disable_quant_qdq``. int16 is for EPs that run 16-bit QDQ as such.

The score is measured on ``--target-data`` (held-out inputs, the first ``samples``), else on the first
calibration samples, on which the ranges were also calibrated: a choice made there can fit them and not
held-out data (measured on squeezenet: 19.3 -> 20.6 dB held out while the calibration score went 21.5 ->
25.3 dB), so give held-out data, and check the result with ``onnxq eval --data``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxq.errors import ConfigError, PassError
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

RAISE_TO = ("float", "int16")


@dataclass(frozen=True)
class MixedPrecisionConfig:
    target_sqnr_db: float = 30.0  # the worst output's SQNR against float the model must reach (--target-sqnr)
    raise_to: str = "float"  # float: quantized nodes left float; int16: activation groups at 16 bits
    samples: int = 32  # inputs the score is measured on
    data: str | None = None  # held-out inputs to measure on (--target-data); default: calibration samples
    min_gain_db: float = 0.1  # a candidate is kept only if the score rises by this much (not by noise)
    max_evaluations: int = 400  # models built and run, all steps together

    def __post_init__(self) -> None:
        if not np.isfinite(self.target_sqnr_db) or not 0 <= self.target_sqnr_db <= 200:
            raise ConfigError(
                f"mixed-precision: target_sqnr_db must be between 0 and 200 dB, got {self.target_sqnr_db}",
                hint="give --target-sqnr DB (e.g. 30)",
            )
        if self.raise_to not in RAISE_TO:
            raise ConfigError(f"mixed-precision: raise_to must be one of {', '.join(RAISE_TO)}, got {self.raise_to!r}",
                              hint="float (for ORT's CPU EP) or int16 (for EPs with 16-bit kernels)")  # fmt: skip
        if self.samples < 1 or self.max_evaluations < 1:
            raise ConfigError(
                "mixed-precision: samples and max_evaluations must be at least 1",
                hint="e.g. samples 32, max_evaluations 400",
            )


class _Scorer:
    """The worst output SQNR (dB) of a candidate model against the float model, on fixed feeds."""

    def __init__(self, float_model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> None:
        from onnxq.quantize.analyze import OutputRunner

        self.run = OutputRunner(feeds)
        self.reference = self.run(float_model)
        self.evaluations = 0

    def __call__(self, model: onnx.ModelProto) -> float:
        from onnxq.quantize.analyze import sqnr_db, worst_db

        self.evaluations += 1
        got = self.run(model)
        worst = worst_db([sqnr_db(ref, got[name]) for name, ref in self.reference.items()])
        return float("inf") if worst is None else worst  # None: every output identical to float


def calibration_feeds(ctx: QuantizeContext, samples: int) -> list[dict[str, np.ndarray]]:
    """The first calibration batches, up to ``samples`` samples (the last batch whole)."""
    feeds, n = [], 0
    for batch in ctx.calib.batches(ctx.batch_size):
        feeds.append(batch)
        n += ctx.calib.samples_in(batch)
        if n >= samples:
            break
    return feeds


def _target_feeds(ctx: QuantizeContext, cfg: MixedPrecisionConfig) -> tuple[list[dict[str, np.ndarray]], str]:
    if cfg.data is None:
        feeds = calibration_feeds(ctx, cfg.samples)
        return feeds, f"{sum(ctx.calib.samples_in(f) for f in feeds)} calibration samples"
    from onnxq.data import open_dataset

    data = open_dataset(cfg.data, ctx.pre_qdq, limit=cfg.samples)
    return list(data.batches(data.check_batch_size(None))), f"{len(data)} samples of {cfg.data}"


def _candidates(ctx: QuantizeContext, raise_to: str) -> list[list[str]]:
    """What can be raised, each a list of names: quantized nodes (to float), or the shared-scale groups of
    quantized activations (to int16), in the plan's order."""
    if raise_to == "float":
        return [[name] for name in ctx.plan.nodes]
    members: dict[str, list[str]] = {}
    for t in ctx.plan.tensors:
        members.setdefault(ctx.plan.groups[t], []).append(t)
    return list(members.values())


def _builder(ctx: QuantizeContext, raise_to: str):
    """chosen -> the QDQ model with those nodes float (or those activation groups at 16 bits); None when the
    re-planned model needs a range calibration did not take."""
    from onnxq.passes.qdq import plan_qdq, write_qdq

    def build(chosen: list[list[str]]) -> onnx.ModelProto | None:
        names = tuple(n for c in chosen for n in c)
        if raise_to == "int16":
            return write_qdq(ctx.pre_qdq, ctx, dataclasses.replace(ctx.qdq, wide_tensors=names)).model
        qdq = dataclasses.replace(ctx.qdq, exclude_nodes=(*ctx.qdq.exclude_nodes, *names))
        plan = plan_qdq(ctx.pre_qdq, qdq)
        if any(t not in ctx.ranges for t in plan.tensors):
            return None
        return write_qdq(ctx.pre_qdq, ctx, qdq, plan).model

    return build


def _record_choice(ctx: QuantizeContext, raise_to: str, names: list[str]) -> None:
    """The QDQ config and plan of the model chosen, for the passes after this one and the summary."""
    from onnxq.passes.qdq import plan_qdq

    if raise_to == "int16":
        ctx.qdq = dataclasses.replace(ctx.qdq, wide_tensors=tuple(names))
        return
    ctx.qdq = dataclasses.replace(ctx.qdq, exclude_nodes=(*ctx.qdq.exclude_nodes, *names))
    ctx.plan = plan_qdq(ctx.pre_qdq, ctx.qdq)
    for name in names:
        ctx.plan.skipped[name] = "left float by mixed precision (--target-sqnr)"


def _check(ctx: QuantizeContext, raise_to: str) -> None:
    from onnxq.passes.qdq import WIDE_TYPES
    from onnxq.quantize.targets import check_choices, get_target

    if ctx.pre_qdq is None or ctx.plan is None or ctx.ranges is None or ctx.calib is None:
        raise PassError("mixed-precision runs after qdq, with calibration data",
                        hint="quantize statically (--calib DATA), not with --dynamic")  # fmt: skip
    if raise_to == "float":
        return
    if ctx.qdq.activation_type not in WIDE_TYPES:
        raise ConfigError(
            f"mixed-precision raises 8-bit activations to 16 bits; these are {ctx.qdq.activation_type} already",
            hint="drop --target-sqnr, or quantize with 8-bit activations",
        )
    q = ctx.qdq
    check_choices(get_target(q.target), activation_type=q.wide_type, weight_type=q.weight_type,
                  symmetric_activations=q.act_symmetric, symmetric_weights=q.symmetric_weights)  # fmt: skip


def _run(model: onnx.ModelProto, ctx: QuantizeContext, cfg: MixedPrecisionConfig) -> PassResult:
    _check(ctx, cfg.raise_to)
    feeds, source = _target_feeds(ctx, cfg)
    score = _Scorer(ctx.pre_qdq, feeds)
    build = _builder(ctx, cfg.raise_to)

    base = score(model)
    details: dict[str, Any] = {"target_sqnr_db": cfg.target_sqnr_db, "raise_to": cfg.raise_to,
                               "sqnr_db_8bit": round(base, 2),
                               "measured_on": source}  # fmt: skip
    if base >= cfg.target_sqnr_db:
        details.update(target_met=True, sqnr_db=round(base, 2), raised=[], steps={},
                       evaluations=score.evaluations)  # fmt: skip
        return PassResult(model, False, details)
    groups = _candidates(ctx, cfg.raise_to)
    alone = []
    for g in groups[: max(cfg.max_evaluations - score.evaluations, 0)]:
        candidate = build([g])
        if candidate is not None:
            alone.append((score(candidate), g))
    best_model, best, chosen, raised, dropped = model, base, [], [], 0
    for s_alone, g in sorted(alone, key=lambda x: -x[0]):
        if best >= cfg.target_sqnr_db or score.evaluations >= cfg.max_evaluations:
            break
        candidate = build([*chosen, g])
        s = score(candidate) if candidate is not None else float("-inf")
        if s > best + cfg.min_gain_db:  # kept; a group that does not help beside the ones kept is dropped
            chosen.append(g)
            best_model, best = candidate, s
            raised.append({"names": g, "sqnr_db_alone": round(s_alone, 2), "sqnr_db_after": round(s, 2)})
        else:
            dropped += 1
    if raised:
        _record_choice(ctx, cfg.raise_to, [t for step in raised for t in step["names"]])
    details.update(target_met=bool(best >= cfg.target_sqnr_db), sqnr_db=round(best, 2),
                   raised=[t for step in raised for t in step["names"]], candidates=len(groups),
                   tried_alone=len(alone), evaluations=score.evaluations, tried_and_dropped=dropped,
                   steps={step["names"][0]: step for step in raised})  # fmt: skip
    return PassResult(best_model, best_model is not model, details)


SPEC = PassSpec(
    name="mixed-precision",
    phase=Phase.FORMAT,
    config=MixedPrecisionConfig,
    run=_run,
    summary="nodes left float (or activations at 16 bits) where 8 bits break, by measured SQNR, to --target-sqnr",
    needs=("qdq", "plan", "ranges"),
    provides=("qdq", "plan"),
    after=("qdq",),
)
