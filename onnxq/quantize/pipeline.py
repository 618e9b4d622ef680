"""The pass contract and the driver that runs a pipeline of passes.

A pass is declared once, by a :class:`PassSpec` in its own module: a name, a phase, a typed frozen config
class, ``run(model, ctx, cfg) -> PassResult``, a one-line summary, and the context fields it needs and
provides. The driver (:func:`run_pipeline`) enforces the contract, not each pass: it refuses an order in
which a pass would read a context field no earlier pass provides, times every pass, writes the log entry
that feeds the summary and the report, checks that the pass left its input model untouched, and on a
failure names the pass and the passes that ran before it.

Phases follow the math: float-preserving rewrites (prepare, CLE) change weights and activation ranges, so
they come before calibration; the passes that need the quantization parameters fixed (AdaRound, bias
correction) come after it; the format passes (QDQ insertion) write the final graph.
"""

from __future__ import annotations

import enum
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

if TYPE_CHECKING:
    from onnxq.data import Dataset
    from onnxq.passes.qdq import QDQConfig, QDQPlan
    from onnxq.quantize.calibrate import RangeTable

from onnxq.errors import OnnxqError, PassError


class Phase(enum.IntEnum):
    """Where a pass may sit in the pipeline; the driver runs phases in this order."""

    FLOAT = 0  # rewrites that keep the float function (prepare, CLE)
    CALIBRATE = 1  # the QDQ plan and the ranges of the tensors it needs
    WEIGHT = 2  # weight rewrites that need the quantization parameters (AdaRound, bias correction)
    FORMAT = 3  # the output graph (QDQ insertion)

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class BNStats:
    """The per-channel statistics of the pre-activation a folded BatchNormalization normalised.

    ``output`` is the folded layer's output tensor; ``mean`` is BatchNorm's beta, ``std`` its |gamma|
    (float32, per channel). CLE rescales them and high-bias absorption shifts them, so that analytical bias
    correction later reads the statistics of the layer as it is then.
    """

    output: str
    mean: np.ndarray
    std: np.ndarray


@dataclass
class QuantizeContext:
    """What flows beside the model through the pipeline: data, options and typed results of earlier passes."""

    calib: Dataset | None = None  # None for data-free passes (dynamic quantization)
    batch_size: int = 1
    verify: bool = False  # passes that keep the float function check it at run time
    progress: bool = False
    qdq: QDQConfig | None = None  # the config the plan and the format passes use
    plan: QDQPlan | None = None  # provided by the "plan" step
    ranges: RangeTable | None = None  # provided by "calibrate"
    weight_overrides: dict[str, np.ndarray] | None = None  # weight name -> rounded integers (AdaRound)
    block_weights: dict[str, Any] | None = None  # node name -> BlockQuant from GPTQ/AWQ (weight-only)
    block_algorithm: str | None = None  # the weight pass that made block_weights
    block_format: Any = None  # the weight-only grid (onnxq.passes._blockwise.BlockFormat), for GPTQ/AWQ
    bn_stats: dict[str, BNStats] = field(default_factory=dict)  # folded layer name -> statistics
    mean_tensors: dict[str, bool] = field(default_factory=dict)  # tensors whose means calibration gathers
    input_means: dict[str, np.ndarray] | None = None  # tensor -> per-channel mean, gathered by calibration
    range_key: dict[str, Any] | None = None  # what a range cache must match (onnxq.quantize.range_cache)
    pre_qdq: onnx.ModelProto | None = None  # the float model the qdq pass started from (for mixed precision)
    log: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


# Context fields a pass may declare in ``needs`` and ``provides``.
CONTEXT_FIELDS = ("calib", "qdq", "plan", "ranges", "weight_overrides", "bn_stats", "input_means", "block_weights")


@dataclass(frozen=True)
class NoOptions:
    """The config of a pass that takes no options."""


@dataclass
class PassResult:
    model: onnx.ModelProto
    modified: bool
    details: dict[str, Any] = field(default_factory=dict)  # counts and notes for the summary


@dataclass(frozen=True)
class PassSpec:
    """One pass, as the registry knows it. ``run`` must return a PassResult and leave its input alone.

    ``optional`` passes are chosen with ``--passes``; the others always run. ``after`` orders passes of one
    phase (bias correction corrects the weights AdaRound rounded). ``before_calibration`` lets a weight
    pass ask calibration to gather something on its runs (bias correction's input means).
    """

    name: str
    phase: Phase
    config: type
    run: Callable[[onnx.ModelProto, QuantizeContext, Any], PassResult]
    summary: str
    needs: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    optional: bool = True
    after: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)  # option alias -> field name
    before_calibration: Callable[[onnx.ModelProto, QuantizeContext, Any], None] | None = None

    def __post_init__(self) -> None:
        params = getattr(self.config, "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise TypeError(f"pass {self.name}: config must be a frozen dataclass, got {self.config!r}")
        unknown = [n for n in (*self.needs, *self.provides) if n not in CONTEXT_FIELDS]
        if unknown:
            raise TypeError(f"pass {self.name}: unknown context fields {unknown}; known: {CONTEXT_FIELDS}")

    @property
    def option_key(self) -> str:
        """The recipe key that holds this pass's options (``bias-correction`` -> ``bias_correction``)."""
        return self.name.replace("-", "_")

    @property
    def timing_key(self) -> str:
        return f"{self.option_key}_s"


@dataclass(frozen=True)
class Step:
    """A pass with its config, as the driver runs it."""

    spec: PassSpec
    config: Any


def check_order(steps: list[Step], available: Iterable[str] = ()) -> None:
    """Refuse an order in which a pass needs a context field that nothing before it provides."""
    have = set(available)
    previous = None
    for step in steps:
        spec = step.spec
        if previous is not None and spec.phase < previous.phase:
            raise PassError(
                f"pass {spec.name} ({spec.phase.label} phase) cannot run after {previous.name} "
                f"({previous.phase.label} phase)",
                hint="phases run in the order float -> calibrate -> weight -> format",
            )
        missing = [n for n in spec.needs if n not in have]
        if missing:
            raise PassError(
                f"pass {spec.name} needs {', '.join(missing)}, which no pass before it provides",
                hint="see `onnxq passes` for what each pass needs and provides",
            )
        have.update(spec.provides)
        previous = spec


def run_pipeline(model: onnx.ModelProto, steps: list[Step], ctx: QuantizeContext) -> onnx.ModelProto:
    """Run ``steps`` in order on ``model``; each pass is timed and logged in ``ctx.log`` and ``ctx.timings``."""
    check_order(steps, [name for name in CONTEXT_FIELDS if getattr(ctx, name) not in (None, {}, [])])
    done: list[str] = []
    # (model, fingerprint) of the last model checked, reused when a pass returns it unchanged; the model itself is
    # held, not its id(), which a later model may reuse once the earlier one is freed
    known: tuple[onnx.ModelProto | None, Any] = (None, None)
    for i, step in enumerate(steps):
        if "ranges" in step.spec.provides:  # later passes may ask calibration to gather more on its runs
            for later in steps[i + 1 :]:
                if later.spec.before_calibration is not None:
                    later.spec.before_calibration(model, ctx, later.config)
        before = known[1] if known[0] is model else model_fingerprint(model)
        result = _run_step(model, step, ctx, done, before)
        if result is model:
            known = (model, before)  # unchanged (the step checked it): the next step starts from it
        model = result
        done.append(step.spec.name)
    return model


def _run_step(model: onnx.ModelProto, step: Step, ctx: QuantizeContext, done: list[str], before) -> onnx.ModelProto:
    spec = step.spec
    start = time.perf_counter()
    try:
        result = spec.run(model, ctx, step.config)
    except OnnxqError as exc:
        exc.hint = _with_history(exc.hint, spec.name, done)
        raise
    except Exception as exc:
        raise PassError(
            f"pass {spec.name} failed: {type(exc).__name__}: {exc}",
            hint=_with_history("this is an onnxq bug: rerun with --debug and report it", spec.name, done),
        ) from exc
    seconds = time.perf_counter() - start
    if not isinstance(result, PassResult):
        raise PassError(
            f"pass {spec.name} returned {type(result).__name__}, not a PassResult",
            hint="pass developer: run() must return onnxq.quantize.pipeline.PassResult",
        )
    if before is not None and model_fingerprint(model) != before:
        raise PassError(
            f"pass {spec.name} modified its input model",
            hint="pass developer: copy the model (onnx.ModelProto.CopyFrom) before editing it",
        )
    ctx.timings[spec.timing_key] = ctx.timings.get(spec.timing_key, 0.0) + seconds
    ctx.log.append({"pass": spec.name, "modified": result.modified, "seconds": round(seconds, 4), **result.details})
    return result.model


def _with_history(hint: str | None, name: str, done: list[str]) -> str:
    history = f"[in pass {name}, after {', '.join(done)}]" if done else f"[in pass {name}, the first]"
    return f"{hint} {history}" if hint else history


_FINGERPRINT_LIMIT = 1 << 34  # 16 GiB: above it the check is skipped


def model_fingerprint(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(size, CRC-32) over the model's parts, None above 16 GiB, where the check is skipped. A checksum, not a
    cryptographic hash: it guards against a pass editing its input by mistake. The graph is taken part by part
    and an initializer's raw bytes directly, so that a 650 MB LLM is checked in well under a second, instead of
    being serialised whole (2-4 s each time, measured on SmolLM2-135M)."""
    size = crc = 0
    for part in _model_parts(model):
        size += len(part)
        if size > _FINGERPRINT_LIMIT:
            return None
        crc = zlib.crc32(part, crc)
    return size, crc


def _model_parts(model: onnx.ModelProto) -> Iterator[bytes]:
    g = model.graph
    m = model
    yield f"{m.ir_version}|{m.producer_name}|{m.producer_version}|{m.domain}|{m.model_version}|{m.doc_string}".encode()
    for seq in (m.opset_import, m.metadata_props, m.functions, m.training_info):
        yield b"|".join(item.SerializeToString() for item in seq) + b"#"
    for t in g.initializer:
        if t.raw_data:
            yield f"{t.name}|{t.data_type}|{list(t.dims)}|{t.data_location}".encode()
            yield t.raw_data
        else:
            yield t.SerializeToString()
    for seq in (g.node, g.input, g.output, g.value_info, g.sparse_initializer, g.quantization_annotation):
        yield b"|".join(item.SerializeToString() for item in seq) + b"#"
    yield f"{g.name}|{g.doc_string}".encode()
