"""The driver's own steps of the calibrate phase: the QDQ plan, then the ranges of the tensors it needs.

Both are registered like any pass (``onnxq passes`` lists them) but always run: ``plan`` decides from the
graph and the target what is quantized (and, with ``avoid_float_boundaries``, leaves float the nodes next
to float ones); ``calibrate`` runs the model on the calibration data once, observing only the planned
tensors, and gathers on the same runs what the weight passes asked for (``before_calibration``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import onnx

from onnxq.errors import ConfigError, DataError, NothingToQuantizeError
from onnxq.quantize.pipeline import PassResult, PassSpec, Phase, QuantizeContext

METHODS = ("minmax", "percentile", "entropy", "mse")


@dataclass(frozen=True)
class PlanConfig:
    avoid_float_boundaries: bool = False  # leave float the Conv/GlobalAveragePool nodes next to a float node


@dataclass(frozen=True)
class CalibrationConfig:
    method: str = "minmax"
    percentile: float = 99.99
    batch_size: int | None = None  # None: onnxq picks it from the activations' size
    load_ranges: str | None = None  # a range cache to read instead of calibrating (onnxq.quantize.range_cache)
    save_ranges: str | None = None  # where to write the ranges as a range cache

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown calibration method {self.method!r}", hint=f"choose one of {', '.join(METHODS)}")
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}", hint="e.g. --percentile 99.99")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}",
                              hint="give --batch-size 1 or more, or leave it out for onnxq's choice")  # fmt: skip


def check_node_lists(model: onnx.ModelProto, **lists: tuple[str, ...]) -> list[str]:
    """Refuse node names the model does not have (as ``onnxq inspect`` names them) and op types ONNX does not
    know, in the lists ``exclude_nodes``, ``exclude_op_types``, ``include_nodes``, ``include_op_types`` (the
    recipe's fields); return warnings for known op types the model does not use."""
    from onnxq.model import iter_graphs
    from onnxq.passes._graph import node_names

    names = [name for graph in iter_graphs(model.graph) for name in node_names(graph)]
    used = {n.op_type for graph in iter_graphs(model.graph) for n in graph.node}
    warnings = []
    for field, values in lists.items():
        flag = "--" + field.replace("_", "-").removesuffix("s")  # include_op_types -> --include-op-type
        if field.endswith("_nodes"):
            _check_names(values, names, flag)
        else:
            warnings += _check_op_types(values, used, flag)
    return warnings


def _check_names(given: tuple[str, ...], names: list[str], flag: str) -> None:
    import difflib

    unknown = [n for n in given if n not in set(names)]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=3)
        raise ConfigError(
            f"{flag} {unknown[0]!r} is not a node of the model"
            + (f" ({len(unknown)} such names)" if len(unknown) > 1 else ""),
            hint=(f"did you mean {', '.join(close)}? " if close else "") + "`onnxq inspect MODEL` lists the node names",
        )


def _check_op_types(given: tuple[str, ...], used: set[str], flag: str) -> list[str]:
    import difflib

    warnings = []
    for op in given:
        if op in used:
            continue
        if not onnx.defs.has(op):
            close = difflib.get_close_matches(op, sorted(used) or [s.name for s in onnx.defs.get_all_schemas()], n=3)
            raise ConfigError(
                f"{flag} {op!r} is not an ONNX op type",
                hint=(f"did you mean {', '.join(close)}? " if close else "") + "op types are case-sensitive",
            )
        warnings.append(f"{flag} {op}: the model has no {op} node")
    return warnings


def run_plan(model: onnx.ModelProto, ctx: QuantizeContext, cfg: PlanConfig) -> PassResult:
    from onnxq.passes.qdq import plan_qdq

    plan = plan_qdq(model, ctx.qdq)
    details: dict = {"nodes_planned": len(plan.nodes), "tensors_to_calibrate": len(plan.tensors)}
    if cfg.avoid_float_boundaries:
        from onnxq.passes.placement import float_boundary_nodes

        boundary = float_boundary_nodes(model, plan)
        if boundary:
            ctx.qdq = dataclasses.replace(ctx.qdq, exclude_nodes=(*ctx.qdq.exclude_nodes, *boundary))
            plan = plan_qdq(model, ctx.qdq)
            details.update(nodes_left_float=len(boundary), float_boundary_nodes=boundary)
        else:
            details["float_boundaries"] = "no Conv or GlobalAveragePool borders a float node"
    if not plan.nodes and not plan.folded:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(plan.skipped.items())[:5]) or "no op of the policy"
        raise NothingToQuantizeError(
            f"the model has nothing onnxq can quantize ({reasons})",
            hint="run `onnxq inspect MODEL` to see its ops, and `onnxq policy` for what is covered",
        )
    no_rule = _ops_without_rule(model, ctx.qdq.target)
    if no_rule:
        details["ops_without_rule"] = ", ".join(f"{op} x{n}" for op, n in no_rule.items())
    ctx.plan = plan
    return PassResult(model, modified=False, details=details)


def _ops_without_rule(model: onnx.ModelProto, target: str) -> dict[str, int]:
    """Op types the target's placement policy has no rule for (they stay float), with their counts."""
    from collections import Counter

    from onnxq.passes.placement import rule_for

    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.output, *g.input]}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    # ops that compute on float values; shape arithmetic (Shape, Cast to int64, Equal, ...) is left out
    computes = [n for n in g.node if any(types.get(o) in floats for o in n.output) and n.op_type != "Identity"]
    counts = Counter(n.op_type for n in computes if rule_for(n.op_type, target) is None)
    return dict(counts.most_common())


def run_calibration(model: onnx.ModelProto, ctx: QuantizeContext, cfg: CalibrationConfig) -> PassResult:
    """The ranges of the plan's tensors: observed on the calibration data, or read from ``cfg.load_ranges``;
    written to ``cfg.save_ranges`` when asked."""
    from onnxq.quantize import range_cache
    from onnxq.quantize.calibrate import collect_ranges

    overrides = keep_full_range(model, ctx.plan.tensors, cfg.method)
    percentile = cfg.percentile if cfg.method == "percentile" else None
    if cfg.load_ranges:
        _check_cache_use(ctx, cfg)
        ranges = range_cache.load_range_cache(cfg.load_ranges, ctx.range_key, ctx.plan.tensors, cfg.method, percentile)
    else:
        if ctx.calib is None:
            raise DataError(
                "calibration needs data, and none was given", hint="pass --calib DATA or --load-ranges FILE"
            )
        ranges = collect_ranges(
            model,
            ctx.calib,
            ctx.plan.tensors,
            cfg.method,
            batch_size=cfg.batch_size,
            observer_opts={"percentile": cfg.percentile} if cfg.method == "percentile" else None,
            progress=ctx.progress,
            method_overrides=overrides,
            mean_tensors=ctx.mean_tensors or None,
        )
    if cfg.save_ranges:
        range_cache.save_range_cache(cfg.save_ranges, ranges, ctx.range_key, percentile, overrides)
    ctx.ranges = ranges
    if ctx.mean_tensors:
        ctx.input_means = ranges.means
    details = {
        "method": cfg.method,
        "samples": ranges.num_samples,
        "batches": ranges.num_batches,
        "batch_size": ranges.batch_size,
        "tensors": len(ranges),
    }
    if cfg.load_ranges:
        details["ranges_loaded_from"] = str(cfg.load_ranges)
    if cfg.save_ranges:
        details["ranges_saved_to"] = str(cfg.save_ranges)
    if ranges.masked:
        details["mask_sentinels_left_out"] = f"{len(ranges.masked)} tensor(s) held values <= -1e30 (attention masks)"
    if getattr(ranges, "padding", ""):
        details["padding_left_out"] = ranges.padding
    return PassResult(model, modified=False, details=details)


def _check_cache_use(ctx: QuantizeContext, cfg: CalibrationConfig) -> None:
    """A loaded cache replaces the calibration runs, so nothing may need to be gathered on them."""
    if ctx.range_key is None:
        raise ConfigError("a range cache needs the model's key in the context (ctx.range_key)",
                          hint="pass developer: quantize through onnxq.quantize.driver.quantize")  # fmt: skip
    if ctx.mean_tensors:
        raise ConfigError("--load-ranges skips the calibration runs, on which a weight pass asked for the means of "
                          f"{len(ctx.mean_tensors)} tensors (bias correction with inputs 'float')",
                          hint="drop --load-ranges, or use bias correction's default inputs")  # fmt: skip


def keep_full_range(model: onnx.ModelProto, tensors: list[str], method: str) -> dict[str, str]:
    """Tensors calibrated with minmax whatever the method: graph outputs and the inputs of Softmax.

    Clipping methods (entropy, percentile, mse) trade the largest values for resolution, which is right
    inside a network but wrong for the scores a classifier ranks: clipping the top logits makes the
    best classes tie (squeezenet with entropy everywhere: 50% top-1 agreement, 1 dB SQNR).
    """
    if method == "minmax":
        return {}
    keep = {o.name for o in model.graph.output}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("Softmax", "LogSoftmax"):
            keep.add(node.input[0])
            # through data movement up to the op that computes the scores (squeezenet: pool -> reshape)
            src = producers.get(node.input[0])
            while src is not None and src.op_type in ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"):
                keep.add(src.input[0])
                src = producers.get(src.input[0])
    return {t: "minmax" for t in tensors if t in keep}


PLAN = PassSpec(
    name="plan",
    phase=Phase.CALIBRATE,
    config=PlanConfig,
    run=run_plan,
    summary="decides from the graph and the target which nodes are quantized and which tensors need a range",
    needs=("qdq",),
    provides=("plan",),
    optional=False,
)
CALIBRATE = PassSpec(
    name="calibrate",
    phase=Phase.CALIBRATE,
    config=CalibrationConfig,
    run=run_calibration,
    summary="runs the model on the calibration data, one batch at a time, observing only the planned tensors",
    needs=("plan",),  # and the calibration data, unless the ranges come from a cache (run_calibration checks)
    provides=("ranges", "input_means"),
    optional=False,
    after=("plan",),
)
