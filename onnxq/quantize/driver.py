"""``quantize``: build the context, run the pipeline of registered passes, check the result, save it.

The steps and their order come from the registry (:mod:`onnxq.quantize.registry`): prepare -> [cle] ->
plan -> calibrate -> [adaround] -> [bias-correction] -> qdq. The driver (:func:`run_pipeline`) times and
logs each pass; this module only turns a recipe into steps and the log into a :class:`QuantizeSummary`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxq.errors import DataError, NothingToQuantizeError, PassError
from onnxq.model import check_output_path, default_opset, load_model, lower_ir_version_for_ort, save_model
from onnxq.quantize.calibration import check_node_lists
from onnxq.quantize.pipeline import QuantizeContext, Step, run_pipeline
from onnxq.quantize.presets import apply_preset
from onnxq.quantize.recipe import QuantizeRecipe
from onnxq.quantize.registry import all_passes


@dataclass
class QuantizeSummary:
    """What ``quantize`` did, for the CLI's summary and the report. ``nodes_quantized`` and ``op_counts`` count
    nodes of the input model (folded activations included); ``node_counts`` adds the input's node count, the
    folded activations and what prepare's rewrites made and removed (:mod:`onnxq.quantize.node_counts`)."""

    input_path: str
    output_path: str
    recipe: dict[str, Any]
    size_before: int
    size_after: int
    nodes_quantized: int
    op_counts: dict[str, int]
    skipped: dict[str, str]
    calib_samples: int
    timings: dict[str, float]
    calib_batch_size: int | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    node_counts: dict[str, Any] | None = None  # None for dynamic quantization, which has no plan
    preset: str = ""  # the preset applied and why ("" for none)
    notes: list[str] = field(default_factory=list)  # choices made for this machine, and why

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def quantize(
    model_path: str | Path,
    output_path: str | Path,
    calib: Any,
    recipe: QuantizeRecipe | None = None,
    *,
    progress: bool = False,
    verify: bool = False,
) -> QuantizeSummary:
    """Quantize the float model at ``model_path`` with calibration data ``calib``; write ``output_path``."""
    notes, machine_warnings = cpu_int8_lines(recipe or QuantizeRecipe())
    recipe = (recipe or QuantizeRecipe()).resolved()
    start = time.perf_counter()
    check_output_paths(model_path, output_path, calib, recipe)
    from onnxq.quantize.streaming import streams

    if streams(model_path, calib, recipe):
        return _streamed(model_path, output_path, recipe, calib, progress)
    model = load_float_model(model_path)
    recipe, preset = apply_preset(model, recipe, has_data=calib is not None)
    exclusion_warnings = check_node_lists(model, **recipe.node_lists())
    ctx = new_context(model, calib, recipe, progress=progress, verify=verify)
    steps = pipeline_steps(model, recipe)
    if recipe.load_ranges or recipe.save_ranges:
        ctx.range_key = range_key(model, steps)
    lower_ir_version_for_ort(model)  # onnx >= 1.23 writes IR 14, which this ORT (and its checks here) cannot read
    ctx.timings["load_s"] = time.perf_counter() - start
    qmodel = run_pipeline(model, steps, ctx)
    t = time.perf_counter()
    lower_ir_version_for_ort(qmodel)
    check_quantized_model(qmodel, model_path, ctx)
    save_model(qmodel, output_path, input_path=model_path)
    ctx.timings["check_and_save_s"] = time.perf_counter() - t
    ctx.timings["total_s"] = time.perf_counter() - start
    summary = summarize(model, model_path, output_path, recipe, ctx)
    summary.warnings[:0] = exclusion_warnings + machine_warnings
    summary.preset = preset
    summary.notes = notes
    return summary


def _streamed(model_path: Any, output_path: Any, recipe: QuantizeRecipe, calib: Any, progress: bool
              ) -> QuantizeSummary:  # fmt: skip
    """:func:`onnxq.quantize.streaming.stream_weight_only`, summarized like the in-memory weight-only run."""
    from onnxq.quantize.streaming import stream_weight_only

    done = stream_weight_only(model_path, output_path, recipe, calib, progress=progress)
    entry = done["details"]
    counts = {op: n for op, n in (("MatMul", entry["matmuls_quantized"]), ("Gemm", entry["gemms_quantized"]),
                                  ("Gather", entry["embedding_tables"])) if n}  # fmt: skip
    mib = 1 << 20
    check = done["check_peak_rss_bytes"]
    how = "one tensor at a time" if calib is None else \
        f"the graph run in {done['passes'][0]['layerwise']['parts']} parts over the calibration data"
    note = (f"streamed from external data, {how}: peak RSS {done['peak_rss_bytes'] / mib:,.0f} MiB"
            + (f" (ORT's load check, in a child process: {check / mib:,.0f} MiB)" if check else ""))  # fmt: skip
    return QuantizeSummary(
        input_path=str(model_path), output_path=str(output_path), recipe=recipe.to_dict(),
        size_before=stored_bytes(model_path), size_after=stored_bytes(output_path),
        nodes_quantized=sum(counts.values()), op_counts=counts, skipped=entry["skip_reasons"],
        calib_samples=done["calib_samples"],
        timings={"quantize_s": round(done["quantize_s"], 3), "total_s": round(done["total_s"], 3)},
        passes=done["passes"], notes=[note], warnings=done["warnings"] + _weight_warnings(done["passes"]),
    )  # fmt: skip


def cpu_int8_lines(recipe: QuantizeRecipe) -> tuple[list[str], list[str]]:
    """The note (uint8 weights chosen) or the warning (int8 weights asked for) of a recipe for ORT's CPU EP with
    8-bit activations on a machine whose kernels saturate uint8 x int8 products (:mod:`onnxq.runtime.cpu_int8`),
    given the recipe before its defaults are filled in."""
    from onnxq.quantize.targets import default_weight_type, get_target
    from onnxq.runtime.cpu_int8 import ENV, WHY

    if recipe.weight_only is not None:  # weights only: no integer kernel multiplies activations
        return [], []
    target = get_target(recipe.target)
    acts = recipe.activation_type or target.activation_type  # --dynamic: uint8, the target's
    exact_here = default_weight_type(target, acts, reduce_range=recipe.reduce_range)
    if exact_here == target.weight_type:
        return [], []  # nothing here differs from the target's own default
    if recipe.weight_type is None:
        return [f"weights are uint8 with zero point 128 (the grid of symmetric int8): {WHY}, and compute them "
                "exactly as uint8 x uint8 (--reduce-range: 7-bit int8 weights, faster, one bit coarser); for a "
                f"machine with VNNI, {ENV}=exact gives int8 weights"], []  # fmt: skip
    if recipe.weight_type != "int8":
        return [], []
    return [], [f"int8 weights with {acts} activations: {WHY}, so this model's outputs on this machine differ from "
                "what it defines; leave --weight-type out for uint8 weights (zero point 128), exact here, or add "
                "--reduce-range for 7-bit int8 weights"]  # fmt: skip


def check_output_paths(model_path: Any, output_path: Any, calib: Any, recipe: QuantizeRecipe) -> None:
    """Before any work: the output model's path and the range cache's, neither overwriting an input."""
    check_output_path(output_path, model_path, inputs=[("the calibration data", calib)])
    if recipe.save_ranges:
        from onnxq.quantize.range_cache import check_cache_path

        inputs = [("the model", model_path), ("the calibration data", calib), ("the output model", output_path),
                  ("the loaded range cache", recipe.load_ranges)]  # fmt: skip
        check_cache_path(recipe.save_ranges, inputs)


def load_float_model(model_path: str | Path) -> onnx.ModelProto:
    """The model at ``model_path``, refused when it already holds quantization ops."""
    model = load_model(model_path)
    already = quantized_op_counts(model)
    if already:
        found = ", ".join(f"{k} x{v}" for k, v in sorted(already.items()))
        raise NothingToQuantizeError(
            f"{model_path} is already quantized ({found})", hint="pass the float model that this one was made from"
        )
    return model


def new_context(
    model: onnx.ModelProto, calib: Any, recipe: QuantizeRecipe, *, progress: bool = False, verify: bool = False
) -> QuantizeContext:
    """The context for ``model``: the data checked against the original model first, so that a bad file fails
    before any work and prepare's verify can run on real inputs."""
    from onnxq.data import open_dataset

    if calib is None and recipe.calibration_needs_data():
        raise DataError(
            "static quantization needs calibration data, and none was given",
            hint="pass --calib DATA (.npz, .npy, a folder of .npy, .npz or test_data_set_*), about 100-500 "
            "samples; or quantize dynamically with --dynamic (no data)",
        )
    data = None if calib is None else open_dataset(calib, model, limit=recipe.calib_samples)
    ctx = QuantizeContext(calib=data, verify=verify, progress=progress, qdq=recipe.qdq())
    if recipe.weight_only is not None:
        ctx.block_format = recipe.weight_only_config().block_format
    if data is not None and recipe.weight_only is not None and recipe.algorithm in ("gptq", "awq"):
        from onnxq.passes._hessian import capture_batch_size

        ctx.batch_size = capture_batch_size(data, recipe.batch_size)
    elif data is not None:
        ctx.batch_size = data.check_batch_size(recipe.batch_size)
    return ctx


def pipeline_steps(model: onnx.ModelProto, recipe: QuantizeRecipe) -> list[Step]:
    """The registered passes this recipe runs, in registry order, each with its config."""
    from onnxq.passes.prepare import PrepareConfig

    # upgrade only: the opset the quantized types need, or the one asked for, whichever is higher
    opset = max(recipe.opset or 0, recipe.qdq().required_opset(), default_opset(model) or 0)
    mixed = recipe.pass_options.get("mixed-precision")
    if mixed is not None and mixed.raise_to == "int16":  # its 16-bit activations need the opset that has them
        wide = dataclasses.replace(recipe.qdq(), wide_tensors=("any",))
        opset = max(opset, wide.required_opset())
    fixed: dict[str, Any] = {"prepare": PrepareConfig(target_opset=opset)}
    if recipe.dynamic:
        fixed["dynamic"] = recipe.dynamic_config()
    elif recipe.weight_only is not None:  # the graph is kept as it is (prepare only to reach opset 21 for qdq)
        fixed["weight-only"] = recipe.weight_only_config()
        if recipe.weight_format == "qdq" and (default_opset(model) or 0) < 21:  # DequantizeLinear's block_size
            fixed["prepare"] = PrepareConfig(target_opset=max(opset, 21))
        else:
            del fixed["prepare"]
    else:
        fixed.update(plan=recipe.plan(), calibrate=recipe.calibration(), qdq=recipe.qdq())
    steps = []
    for name, spec in all_passes().items():
        if name in fixed:
            steps.append(Step(spec, fixed[name]))
        elif name in recipe.passes:
            steps.append(Step(spec, recipe.pass_options[name]))
    return steps


def range_key(model: onnx.ModelProto, steps: list[Step]) -> dict[str, Any]:
    """What a range cache for this model and these steps must match: the float passes chosen before calibration
    (prepare always runs, and keeps the float function) with their options."""
    from onnxq.quantize.options import config_to_dict
    from onnxq.quantize.pipeline import Phase
    from onnxq.quantize.range_cache import range_cache_key

    chosen = [(s.spec.name, config_to_dict(s.config)) for s in steps if s.spec.phase == Phase.FLOAT and s.spec.optional]
    return range_cache_key(model, chosen)


def summarize(
    model: onnx.ModelProto, model_path: Any, output_path: Any, recipe: QuantizeRecipe, ctx: QuantizeContext
) -> QuantizeSummary:
    """The summary of a finished run; ``model`` is the float input model, against which nodes are counted."""
    from onnxq.quantize.node_counts import count_nodes

    if recipe.dynamic or recipe.weight_only is not None:
        return _dynamic_summary(model_path, output_path, recipe, ctx)
    qdq = next(e for e in ctx.log if e["pass"] == "qdq")
    warnings = []
    from onnxq.quantize.targets import get_target

    if get_target(recipe.target).slow_symmetric_int8 and recipe.act_symmetric and recipe.activation_type == "int8":
        warnings.append(
            "symmetric int8 activations (the TensorRT-style recipe) run slower than float on ORT's CPU EP "
            "(measured 0.56-0.78x float speed on squeezenet and ppocr, bench/results/quantize_vs_ort.md); "
            "use the default uint8 asymmetric activations for CPU deployment, int8 for --target tensorrt"
        )
    sixteen = recipe.activation_type in ("uint16", "int16") and recipe.target == "ort"
    if sixteen and any(op in ("MatMul", "Gemm") for op in qdq.get("op_counts", {})):
        warnings.append(
            f"{recipe.activation_type} activations into MatMul/Gemm: ORT's CPU EP (1.32) runs DequantizeLinear(int8 "
            "weight) -> MatMul as MatMulNBits at accuracy level 4, requantizing the 16-bit input to int8 (a test "
            "graph that computes 44 dB gives 19 dB in a default session); for CPU accuracy leave such nodes float "
            "(--target-sqnr), or run with the session option session.disable_quant_qdq=1"
        )
    qop = next((e for e in ctx.log if e["pass"] == "qoperator"), None)
    if qop is not None and not qop["nodes_converted"]:
        why = sorted(set(qop["kept_qdq"].values()))[:2]
        warnings.append(
            "--format qoperator converted nothing; the model is QDQ" + (f" ({'; '.join(why)})" if why else "")
        )
    mixed = next((e for e in ctx.log if e["pass"] == "mixed-precision"), None)
    if mixed is not None and not mixed["target_met"]:
        warnings.append(
            f"--target-sqnr {mixed['target_sqnr_db']:g} dB not reached: {mixed['sqnr_db']:g} dB with "
            f"{len(mixed['raised'])} raised to {mixed['raise_to']} ({mixed['evaluations']} models evaluated)"
        )
    if qdq.get("bias_saturated_values"):
        warnings.append(f"{qdq['bias_saturated_values']} int32 bias values saturated")
    counts = count_nodes(model, ctx.plan)
    return QuantizeSummary(
        input_path=str(model_path),
        output_path=str(output_path),
        recipe=recipe.to_dict(),
        size_before=Path(model_path).stat().st_size,
        size_after=Path(output_path).stat().st_size,
        nodes_quantized=sum(counts.quantized.values()),
        op_counts=counts.quantized,
        skipped=ctx.plan.skipped,
        calib_samples=ctx.ranges.num_samples,
        calib_batch_size=ctx.ranges.batch_size,
        timings={k: round(v, 3) for k, v in ctx.timings.items()},
        passes=ctx.log,
        warnings=warnings,
        node_counts=counts.to_dict(),
    )


def _dynamic_summary(
    model_path: Any, output_path: Any, recipe: QuantizeRecipe, ctx: QuantizeContext
) -> QuantizeSummary:
    entry = next(e for e in ctx.log if e["pass"] in ("dynamic", "weight-only"))
    counts = {"MatMul": entry["matmuls_quantized"], "Gemm": entry["gemms_quantized"],
              "Gather": entry.get("embedding_tables", 0)}  # fmt: skip
    counts = {op: n for op, n in counts.items() if n}
    return QuantizeSummary(
        input_path=str(model_path), output_path=str(output_path), recipe=recipe.to_dict(),
        size_before=stored_bytes(model_path), size_after=stored_bytes(output_path),
        nodes_quantized=sum(counts.values()), op_counts=counts, skipped=entry["skip_reasons"],
        calib_samples=len(ctx.calib) if ctx.calib is not None else 0,
        timings={k: round(v, 3) for k, v in ctx.timings.items()}, passes=ctx.log, warnings=_weight_warnings(ctx.log),
    )  # fmt: skip


def _weight_warnings(passes: list[dict]) -> list[str]:
    from onnxq.passes._hessian import few_tokens_warning

    return few_tokens_warning(passes)


def stored_bytes(path: Any) -> int:
    """The model file's size plus its external-data files'."""
    from onnxq.model_files import external_data_files

    return Path(path).stat().st_size + sum(f.stat().st_size for f in set(external_data_files(Path(path))))


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of quantization ops already in the model (empty when it is a float model)."""
    from onnxq.inspect.facts import is_quantized_op

    counts: dict[str, int] = {}
    for node in model.graph.node:
        if is_quantized_op(node.op_type):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def check_quantized_model(model: onnx.ModelProto, where: Any, ctx: QuantizeContext | None = None) -> None:
    """The output must pass the full checker and load in ORT (failing that is an onnxq bug, said plainly), and
    its outputs must be finite on the first calibration batch (else the quantization itself broke it)."""
    from onnxq.runtime.session import internal_session

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise PassError(
            f"the quantized model of {where} fails onnx.checker: {str(exc).splitlines()[0]}",
            hint="this is an onnxq bug: rerun with --debug and report it; "
            "--exclude-op-type can skip the offending op meanwhile",
        ) from exc
    try:
        session = internal_session(model)
    except Exception as exc:
        raise PassError(
            f"ONNX Runtime refuses the quantized model of {where}: {str(exc).splitlines()[0]}",
            hint="this is an onnxq bug: rerun with --debug and report it",
        ) from exc
    if ctx is not None and ctx.calib is not None:
        _check_finite_outputs(session, next(ctx.calib.batches(ctx.batch_size)), where)


def _check_finite_outputs(session: Any, feeds: dict[str, Any], where: Any) -> None:
    import numpy as np

    from onnxq.errors import QuantizationError

    names = [o.name for o in session.get_outputs()]
    for name, value in zip(names, session.run(None, feeds), strict=True):
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = int((~np.isfinite(value)).sum())
            raise QuantizationError(
                f"the quantized model of {where} gives {bad} NaN/Inf value(s) in output {name!r} on the "
                "calibration data, where the float model's outputs are finite",
                hint="a scale overflowed (weights or activations near the float32 limit): leave the layers "
                "with extreme weights in float with --exclude-node, or check the float model's weights",
            )
