"""The Python API that the CLI calls: ``quantize`` (and, re-exported, evaluation and benchmarking).

``quantize`` runs the static PTQ pipeline:
load -> prepare (opset, constants, BatchNorm folding) -> [cle] -> plan QDQ -> calibrate the planned
tensors -> [bias correction, adaround] -> insert QDQ -> check (onnx.checker full, ORT loads it) -> save.
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
from onnxq.pipeline import PassContext
from onnxq.recipe import QuantizeRecipe


@dataclass
class QuantizeSummary:
    """What ``quantize`` did, for the CLI's summary and the report."""

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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def is_quantized(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of quantization ops already in the model (empty when it is a float model)."""
    from onnxq.inspect import is_quantized_op

    counts: dict[str, int] = {}
    for node in model.graph.node:
        if is_quantized_op(node.op_type):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


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
    from onnxq.calibrate import collect_ranges
    from onnxq.data import open_dataset
    from onnxq.passes.prepare import PrepareConfig, prepare_model
    from onnxq.passes.qdq import apply_qdq, name_nodes, plan_qdq

    recipe = recipe or QuantizeRecipe()
    t0 = time.perf_counter()
    check_output_path(output_path, model_path)
    model = load_model(model_path)
    already = is_quantized(model)
    if already:
        found = ", ".join(f"{k} x{v}" for k, v in sorted(already.items()))
        raise NothingToQuantizeError(
            f"{model_path} is already quantized ({found})",
            hint="pass the float model that this one was made from",
        )
    qcfg = qdq_config(recipe)
    if calib is None:
        raise DataError(
            "static quantization needs calibration data, and none was given",
            hint="pass --calib DATA (.npz, .npy or a folder of .npy), about 100-500 samples",
        )
    timings: dict[str, float] = {}
    # the data is checked against the original model first, so that a bad file fails before any work
    # and prepare's --verify can run on real inputs
    ctx = PassContext(calib=open_dataset(calib, model, limit=recipe.calib_samples), verify=verify, progress=progress)
    ctx.batch_size = ctx.calib.check_batch_size(recipe.batch_size)
    # upgrade only: the opset the quantized types need, or the one asked for, whichever is higher
    target_opset = max(recipe.opset or 0, qcfg.required_opset(), default_opset(model) or 0)
    lower_ir_version_for_ort(model)  # onnx >= 1.23 writes IR 14, which this ORT (and its checks here) cannot read
    prepared = prepare_model(model, PrepareConfig(target_opset=target_opset, verify=verify), ctx)
    ctx.log.append({"pass": "prepare", **prepared.details})
    model = name_nodes(prepared.model)
    ctx.calib = open_dataset(ctx.calib, model)
    timings["prepare_s"] = time.perf_counter() - t0

    if "cle" in recipe.passes:  # CLE changes weights and activation ranges: before calibration
        t = time.perf_counter()
        model = _run_pass("cle", model, ctx, recipe)
        timings["cle_s"] = time.perf_counter() - t

    plan = plan_qdq(model, qcfg)
    if recipe.avoid_float_boundaries:
        from onnxq.passes.placement import float_boundary_nodes

        boundary = float_boundary_nodes(model, plan)
        if boundary:
            qcfg = dataclasses.replace(qcfg, exclude_nodes=(*qcfg.exclude_nodes, *boundary))
            plan = plan_qdq(model, qcfg)
        ctx.log.append(
            {"pass": "float-boundaries", "nodes_left_float": len(boundary), "nodes": boundary}
            if boundary
            else {"pass": "float-boundaries", "result": "no Conv or GlobalAveragePool borders a float node"}
        )
    if not plan.nodes and not plan.folded:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(plan.skipped.items())[:5]) or "no op of the policy"
        raise NothingToQuantizeError(
            f"{model_path} has nothing onnxq can quantize ({reasons})",
            hint="run `onnxq inspect MODEL` to see its ops, and `onnxq policy` for what is covered",
        )
    t1 = time.perf_counter()
    observer_opts = {"percentile": recipe.percentile} if recipe.method == "percentile" else None
    mean_tensors = None
    if "bias-correction" in recipe.passes:
        from onnxq.passes.bias_correction import BiasCorrectionConfig, float_input_tensors

        bc = BiasCorrectionConfig.from_dict(recipe.bias_correction)
        if bc.mode != "analytical" and bc.inputs == "float":  # its means come with calibration's runs
            mean_tensors = float_input_tensors(model, plan)
    ranges = collect_ranges(
        model,
        ctx.calib,
        plan.tensors,
        recipe.method,
        batch_size=recipe.batch_size,  # None: onnxq picks it from the activations' size
        observer_opts=observer_opts,
        progress=progress,
        method_overrides=_keep_full_range(model, plan.tensors, recipe.method),
        mean_tensors=mean_tensors,
    )
    timings["calibrate_s"] = time.perf_counter() - t1
    if mean_tensors:
        from onnxq.passes.bias_correction import MEANS_KEY

        ctx.stats[MEANS_KEY] = ranges.means

    # weight rounding and bias correction need the weight and activation quantization parameters fixed
    weight_overrides = None
    if "adaround" in recipe.passes:
        from onnxq.passes.adaround import AdaRoundConfig, adaround_weights

        t = time.perf_counter()
        weight_overrides, details = adaround_weights(
            model, plan, qcfg, ranges, ctx, AdaRoundConfig.from_dict(recipe.adaround)
        )
        ctx.log.append({"pass": "adaround", **details})
        timings["adaround_s"] = time.perf_counter() - t
    if "bias-correction" in recipe.passes:
        from onnxq.passes.bias_correction import BiasCorrectionConfig, correct_biases

        t = time.perf_counter()
        result = correct_biases(
            model,
            plan,
            qcfg,
            ranges,
            ctx,
            BiasCorrectionConfig.from_dict(recipe.bias_correction),
            weight_overrides=weight_overrides,
        )
        ctx.log.append({"pass": "bias-correction", **result.details})
        model = result.model
        timings["bias_correction_s"] = time.perf_counter() - t

    t2 = time.perf_counter()
    result = apply_qdq(model, plan, ranges, qcfg, weight_overrides=weight_overrides)
    ctx.log.append({"pass": "qdq", **{k: v for k, v in result.details.items() if k != "skipped"}})
    qmodel = result.model
    lower_ir_version_for_ort(qmodel)
    _check_quantized_model(qmodel, model_path)
    timings["qdq_s"] = time.perf_counter() - t2
    save_model(qmodel, output_path, input_path=model_path)
    timings["total_s"] = time.perf_counter() - t0

    warnings = []
    if recipe.target == "ort" and qcfg.act_symmetric and recipe.activation_type == "int8":
        warnings.append(
            "symmetric int8 activations (the TensorRT-style recipe) run slower than float on ORT's CPU EP "
            "(measured 0.56-0.78x float speed on squeezenet and ppocr, bench/results/quantize_vs_ort.md); "
            "use the default uint8 asymmetric activations for CPU deployment, int8 for --target tensorrt"
        )
    if result.details.get("bias_saturated_values"):
        warnings.append(f"{result.details['bias_saturated_values']} int32 bias values saturated")
    return QuantizeSummary(
        input_path=str(model_path),
        output_path=str(output_path),
        recipe=recipe.to_dict(),
        size_before=Path(model_path).stat().st_size,
        size_after=Path(output_path).stat().st_size,
        nodes_quantized=result.details["nodes_quantized"],
        op_counts=result.details["op_counts"],
        skipped=plan.skipped,
        calib_samples=ranges.num_samples,
        calib_batch_size=ranges.batch_size,
        timings={k: round(v, 3) for k, v in timings.items()},
        passes=ctx.log,
        warnings=warnings,
    )


def _keep_full_range(model: onnx.ModelProto, tensors: list[str], method: str) -> dict[str, str]:
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


def qdq_config(recipe: QuantizeRecipe):
    """The QDQ pass's config for a recipe."""
    from onnxq.passes.qdq import QDQConfig

    return QDQConfig(
        target=recipe.target,
        activation_type=recipe.activation_type,
        weight_type=recipe.weight_type,
        per_channel=recipe.per_channel,
        symmetric_activations=recipe.symmetric_activations,
        symmetric_weights=recipe.symmetric_weights,
        exclude_nodes=recipe.exclude_nodes,
        exclude_op_types=recipe.exclude_op_types,
    )


def _run_pass(name: str, model: onnx.ModelProto, ctx: PassContext, recipe: QuantizeRecipe) -> onnx.ModelProto:
    """Float-preserving passes that run before calibration (CLE)."""
    from onnxq.passes.cle import CLEConfig, equalize

    result = equalize(model, CLEConfig.from_dict(recipe.cle), ctx)
    ctx.log.append({"pass": name, **result.details})
    return result.model


def _check_quantized_model(model: onnx.ModelProto, where: Any) -> None:
    """The output must pass the full checker and load in ORT; failing that is an onnxq bug, said plainly."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise PassError(
            f"the quantized model of {where} fails onnx.checker: {str(exc).splitlines()[0]}",
            hint="this is an onnxq bug: rerun with --debug and report it; "
            "--exclude-op-type can skip the offending op meanwhile",
        ) from exc
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise PassError(
            f"ONNX Runtime refuses the quantized model of {where}: {str(exc).splitlines()[0]}",
            hint="this is an onnxq bug: rerun with --debug and report it",
        ) from exc
