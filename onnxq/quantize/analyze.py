"""``onnxq analyze``: which quantized node costs the accuracy, measured by running models in ONNX Runtime.

The recipe is run as ``onnxq quantize`` runs it (no file written); then, against the float model it started
from (the prepared model the qdq pass took), on ``samples`` inputs (``--data``, else calibration samples):

* per quantized node: the worst output SQNR when only that node is left float (how much it costs), when only
  it is quantized (how much it costs alone), and alone with only its weight or only its activations quantized;
* along the graph: the SQNR of every quantized activation tensor of the full model against the float one,
  in graph order (where the error enters and how it grows);
* per activation tensor: the range each calibration method (minmax, percentile, entropy, mse) gives and the
  SQNR of that tensor alone quantized with it, on the measured values, and its outlier ratio (the largest
  channel's max |x| over the median channel's).

Each model variant is one re-plan and QDQ write of the same prepared model with the same ranges, so an
analysis costs a few evaluations per quantized node. ``advice`` says in plain words which nodes and tensors
matter most and what to do about each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxq.errors import DataError

SCHEMA = "onnxq.analyze/1"
METHODS = ("minmax", "percentile", "entropy", "mse")


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float | None:
    """SQNR in dB of ``got`` against ``ref``: None when identical, -inf when ``got`` is not finite."""
    ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    if not np.isfinite(got).all():
        return float("-inf")
    noise = float(np.sum((ref - got) ** 2))
    return None if noise == 0 else float(10 * np.log10(max(float(np.sum(ref * ref)), 1e-300) / noise))


def worst_db(values: list[float | None]) -> float | None:
    """The lowest of the known values (None when none is known)."""
    known = [v for v in values if v is not None]
    return min(known) if known else None


class OutputRunner:
    """Runs a model on the fixed feeds; the outputs named (graph outputs by default), concatenated."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.runs = 0
        self.shapes: dict[str, list[tuple]] = {}  # of the last run, per feed

    def __call__(self, model: onnx.ModelProto, names: list[str] | None = None) -> dict[str, np.ndarray]:
        from onnxq.runtime.session import internal_session

        if names:
            model = _exposed(model, names)
        self.runs += 1
        sess = internal_session(model)
        wanted = [o.name for o in sess.get_outputs()] if not names else names
        outs = [sess.run(wanted, f) for f in self.feeds]
        self.shapes = {n: [np.shape(o[i]) for o in outs] for i, n in enumerate(wanted)}
        return {n: np.concatenate([np.asarray(o[i]).ravel() for o in outs]) for i, n in enumerate(wanted)}


def _exposed(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return out


def _float_weights(model: onnx.ModelProto, weights: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """A copy whose weight DequantizeLinear nodes (``weights``: DQ output -> the float initializer it
    replaces) are gone, their readers taking the float weight: the activations alone quantized."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    outputs = {o.name for o in g.output}
    drop = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] in weights
            and n.output[0] not in outputs}  # fmt: skip
    have = {t.name for t in g.initializer}
    g.initializer.extend(weights[d] for d in drop if weights[d].name not in have)
    kept = [n for n in g.node if not (n.op_type == "DequantizeLinear" and n.output[0] in drop)]
    for n in kept:
        for i, name in enumerate(n.input):
            n.input[i] = weights[name].name if name in drop else name
    del g.node[:]
    g.node.extend(kept)
    return out


def analyze_model(model_path: Any, calib: Any, recipe: Any, *, data: Any = None, samples: int = 32) -> dict:
    """The analysis of ``model_path`` quantized by ``recipe`` (see the module docstring), as a JSON-ready dict."""
    from onnxq.quantize.driver import load_float_model, new_context, pipeline_steps
    from onnxq.quantize.pipeline import run_pipeline
    from onnxq.quantize.presets import apply_preset

    recipe = recipe.resolved()
    if recipe.dynamic:
        raise DataError("analyze measures a statically quantized model", hint="drop --dynamic")
    model = load_float_model(model_path)
    recipe, preset = apply_preset(model, recipe, has_data=calib is not None)
    ctx = new_context(model, calib, recipe)
    qmodel = run_pipeline(model, pipeline_steps(model, recipe), ctx)
    feeds, source = _feeds(ctx, model, data, samples)
    run = OutputRunner(feeds)
    outputs = [o.name for o in ctx.pre_qdq.graph.output]
    produced = {o for n in ctx.pre_qdq.graph.node for o in n.output}
    ref = run(ctx.pre_qdq, list(dict.fromkeys([t for t in ctx.plan.tensors if t in produced] + outputs)))
    shapes = dict(run.shapes)
    score = _score(run, ref, outputs)
    nodes = _per_node(ctx, score)
    full = score(qmodel)
    along = _along_graph(ctx, run, qmodel, ref)
    tensors = _per_tensor(ctx, ref, shapes)
    report = {"schema": SCHEMA, "kind": "analyze", "model": str(model_path), "recipe": recipe.to_dict(),
              "preset": preset, "measured_on": source, "sqnr_db": full, "nodes": nodes, "along_graph": along,
              "tensors": tensors, "runs": run.runs}  # fmt: skip
    report["advice"] = advice(report)
    return report


def _feeds(ctx, model: onnx.ModelProto, data: Any, samples: int) -> tuple[list[dict], str]:
    if data is not None:
        from onnxq.data import open_dataset

        ds = open_dataset(data, model, limit=samples)
        return list(ds.batches(ds.check_batch_size(None))), f"{len(ds)} samples of {data}"
    from onnxq.passes.mixed_precision import calibration_feeds

    feeds = calibration_feeds(ctx, samples)
    n = sum(ctx.calib.samples_in(f) for f in feeds)
    return feeds, f"{n} calibration samples (the ranges were calibrated on them too; --data for held-out ones)"


def _score(run: OutputRunner, ref: dict[str, np.ndarray], outputs: list[str]) -> Callable[[onnx.ModelProto], float]:
    def score(model: onnx.ModelProto) -> float | None:
        got = run(model)
        return worst_db([sqnr_db(ref[o], got[o]) for o in outputs])

    return score


def _variant(ctx, **changes: Any) -> tuple[onnx.ModelProto, Any] | None:
    """The QDQ model re-planned with ``changes`` to the QDQ config; None when it needs a range not calibrated."""
    from onnxq.passes.qdq import plan_qdq, write_qdq

    qdq = dataclasses.replace(ctx.qdq, **changes)
    plan = plan_qdq(ctx.pre_qdq, qdq)
    if not plan.nodes or any(t not in ctx.ranges for t in plan.tensors):
        return None
    return write_qdq(ctx.pre_qdq, ctx, qdq, plan).model, plan


def _per_node(ctx, score) -> list[dict[str, Any]]:
    nodes_by_name = {n.name: n for n in ctx.pre_qdq.graph.node}
    ops = {n: node.op_type for n, node in nodes_by_name.items()}
    rows = []
    for name in ctx.plan.nodes:
        row: dict[str, Any] = {"node": name, "op_type": ops.get(name, "?")}
        left_float = _variant(ctx, exclude_nodes=(*ctx.qdq.exclude_nodes, name))
        row["sqnr_db_when_left_float"] = score(left_float[0]) if left_float else None
        outs = set(nodes_by_name[name].output) if name in nodes_by_name else set()
        folded = tuple(act for act, t in ctx.plan.folded.items() if t in outs)  # its Relu folds with it
        alone = _variant(ctx, include_nodes=(name, *folded), include_op_types=())
        if alone is None:
            rows.append({**row, "sqnr_db_quantized_alone": None})
            continue
        qmodel, plan = alone
        weights = _weight_dqs(qmodel, ctx.pre_qdq, plan)
        row["sqnr_db_quantized_alone"] = score(qmodel)
        row["sqnr_db_weight_alone"] = score(_with_weights(ctx.pre_qdq, qmodel, weights)) if weights else None
        row["sqnr_db_activations_alone"] = score(_float_weights(qmodel, weights))
        rows.append(row)
    return rows


def _with_weights(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, weights: dict) -> onnx.ModelProto:
    """The float model with the weights ``weights`` names replaced by their dequantized values in ``qmodel``
    (the weight quantized alone; activations, folded Relus and all, untouched)."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    dqs = {n.output[0]: n for n in qmodel.graph.node if n.op_type == "DequantizeLinear"}
    out = onnx.ModelProto()
    out.CopyFrom(float_model)
    replaced = {}
    for dq_out, tensor in weights.items():
        dq = dqs[dq_out]
        q, scale = inits[dq.input[0]].astype(np.float64), inits[dq.input[1]].astype(np.float64)
        zp = inits[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % max(q.ndim, 1)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis] = -1
        w = (q - zp.reshape(shape)) * scale.reshape(shape)
        replaced[tensor.name] = numpy_helper.from_array(w.astype(np.float32), tensor.name)
    for t in out.graph.initializer:
        if t.name in replaced:
            t.CopyFrom(replaced[t.name])
    return out


def _weight_dqs(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, plan: Any) -> dict[str, onnx.TensorProto]:
    """DQ output -> the float weight initializer it replaces, for the weights the plan quantizes."""
    before = {n.name: n for n in float_model.graph.node}
    after = {n.name: n for n in qmodel.graph.node}
    inits = {t.name: t for t in float_model.graph.initializer}
    pairs = [(after[node].input[i], before[node].input[i]) for node, i in plan.weights if node in after]
    return {dq: inits[w] for dq, w in pairs if dq != w and w in inits}


def _along_graph(ctx, run: OutputRunner, qmodel: onnx.ModelProto, ref: dict) -> list[dict[str, Any]]:
    """The full model's activation tensors against the float model's, in graph order (the float values the
    quantized model computes there, before their own Q/DQ)."""
    produced = {o for n in qmodel.graph.node for o in n.output}
    names = [t for t in ctx.plan.tensors if t in produced and t in ref]
    got = run(qmodel, names) if names else {}
    return [{"tensor": t, "sqnr_db": sqnr_db(ref[t], got[t])} for t in names]


def outlier_ratio(flat: np.ndarray, shapes: list[tuple]) -> float | None:
    """How far the largest channel reaches beyond a typical one: max |x| over the median of the per-channel
    max |x| (channels: axis 1 of a rank-4 tensor, the last axis otherwise); None without channels."""
    peaks, start = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        x = np.abs(flat[start : start + n].reshape(shape))
        start += n
        if x.ndim < 2 or x.size == 0:
            return None
        axis = 1 if x.ndim == 4 else x.ndim - 1
        peaks.append(np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).max(axis=1))
    peak = np.max(peaks, axis=0) if peaks and len({p.size for p in peaks}) == 1 else None
    if peak is None or peak.size < 2 or np.median(peak) == 0:
        return None
    return float(peak.max() / np.median(peak))


def _per_tensor(ctx, ref: dict[str, np.ndarray], shapes: dict[str, list[tuple]]) -> list[dict[str, Any]]:
    from onnxq.quantize.calibrate import collect_ranges
    from onnxq.quantize.qtypes import compute_qparams, qtype

    tensors = [t for t in ctx.plan.tensors if t in ref]
    by_method = {m: collect_ranges(ctx.pre_qdq, ctx.calib, tensors, m) for m in METHODS}
    aq = qtype(ctx.qdq.activation_type)
    rows = []
    for t in tensors:
        x = ref[t].astype(np.float64)
        row = {"tensor": t, "min": float(x.min()), "max": float(x.max()),
               "outlier_ratio": outlier_ratio(ref[t], shapes.get(t, [])), "methods": {}}  # fmt: skip
        for m, ranges in by_method.items():
            if t not in ranges:
                continue
            lo, hi = ranges[t]
            qp = compute_qparams(lo, hi, aq, symmetric=ctx.qdq.act_symmetric)
            s, z = float(np.asarray(qp.scale)), float(np.asarray(qp.zero_point))
            fq = (np.clip(np.rint(x / s) + z, aq.qmin, aq.qmax) - z) * s
            row["methods"][m] = {"min": float(lo), "max": float(hi), "sqnr_db": sqnr_db(x, fq)}
        rows.append(row)
    return rows


def advice(report: dict[str, Any]) -> list[str]:
    """The few things that matter most, in plain words."""
    lines, full = [], report["sqnr_db"]
    gains = [(r["sqnr_db_when_left_float"] - full, r) for r in report["nodes"]
             if r["sqnr_db_when_left_float"] is not None and full is not None]  # fmt: skip
    for gain, r in sorted(gains, key=lambda g: -g[0])[:3]:
        if gain < 1.0:
            break
        alone = r.get("sqnr_db_quantized_alone")
        part = ""
        w, a = r.get("sqnr_db_weight_alone"), r.get("sqnr_db_activations_alone")
        if w is not None and a is not None:
            part = " (more from its activations than its weight)" if a < w else " (more from its weight)"
        lines.append(f"{r['node']} ({r['op_type']}): left float, the model goes from {full:.1f} to "
                     f"{r['sqnr_db_when_left_float']:.1f} dB; quantized alone it gives "
                     f"{alone if alone is None else round(alone, 1)} dB{part}: --exclude-node {r['node']}, "
                     "or --target-sqnr to let onnxq choose")  # fmt: skip
    chosen = report["recipe"].get("method", "minmax")
    for row in report["tensors"]:
        methods = {m: v["sqnr_db"] for m, v in row["methods"].items() if v["sqnr_db"] is not None}
        if chosen in methods and methods:
            best = max(methods, key=methods.get)
            if methods[best] - methods[chosen] >= 3.0:
                lines.append(f"tensor {row['tensor']}: {best} gives {methods[best]:.1f} dB where {chosen} gives "
                             f"{methods[chosen]:.1f} dB (outlier ratio {row['outlier_ratio'] or 0:.1f})")  # fmt: skip
    return lines[:8] or ["no node costs more than 1 dB and no tensor gains 3 dB from another method"]


def write_analysis(path: str | Path, report: dict[str, Any]) -> Path:
    from onnxq.report.document import write_report

    return write_report(path, report)
