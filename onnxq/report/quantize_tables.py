"""The quantization summary of a report (``report["quantize"]``) as tables, for the Markdown and HTML pages.

Four tables, each ``(headers, rows)`` of plain-text cells like :mod:`onnxq.report.tables`: an overview (recipe,
calibration, nodes, size before and after, time), the quantized nodes by op type, the nodes left in float
grouped by reason, and the passes with what each did. The full summary, every node name included, stays in
the JSON report.
"""

from __future__ import annotations

from typing import Any

from onnxq.quantize.convert import group_by_reason
from onnxq.report.tables import MISSING, Table, fmt_bytes, fmt_num

EXAMPLE_NODES = 3  # node names shown per skip reason; the JSON report lists them all
# Detail keys a pass row leaves out: shown in their own table (op_counts, skipped nodes) or per-node lists
# (skip_reasons, kept_qdq) that would fill a cell with node names.
LISTED_ELSEWHERE = frozenset({"pass", "seconds", "modified", "op_counts", "skip_reasons", "kept_qdq"})


def quantize_tables(summary: dict[str, Any]) -> list[tuple[str, Table]]:
    """``[(caption, table)]`` for a quantize summary dict (``QuantizeSummary.to_dict()``), empty tables left out.

    Captions are plain text; the renderers decide how to show them (a heading, a caption line).
    """
    out = [("Overview", overview_table(summary)), ("Nodes quantized, by op type", quantized_ops_table(summary))]
    skipped = reason_table(summary.get("skipped") or {}, "nodes left in float")
    if skipped[1]:
        out.append(("Nodes left in float, and why", skipped))
    kept = next((p.get("kept_qdq") for p in summary.get("passes") or [] if p.get("pass") == "qoperator"), None)
    if kept:
        out.append(("Nodes kept in QDQ form by the QOperator conversion, and why", reason_table(kept, "nodes")))
    out.append(("Passes, in the order they ran", passes_table(summary)))
    return out


def overview_table(summary: dict[str, Any]) -> Table:
    """One row per fact: model files, recipe, calibration, node counts, size before/after, total time."""
    r = summary.get("recipe") or {}
    before, after = summary.get("size_before"), summary.get("size_after")
    ratio = f" ({before / after:.2f}x smaller)" if before and after else ""
    rows = [
        ["input model", str(summary.get("input_path", MISSING))],
        ["quantized model", str(summary.get("output_path", MISSING))],
        ["recipe", recipe_text(r)],
        ["calibration", calibration_text(summary)],
        ["nodes quantized", str(summary.get("nodes_quantized", MISSING))],
        ["nodes left in float", str(len(summary.get("skipped") or {}))],
        ["size", f"{fmt_bytes(before)} -> {fmt_bytes(after)}{ratio}"],
        ["time", _seconds((summary.get("timings") or {}).get("total_s"))],
    ]
    return ["", "value"], rows


def recipe_text(r: dict[str, Any]) -> str:
    """'target ort; activations uint8 asymmetric; weights int8 symmetric, per channel; passes: cle'."""
    if not r:
        return MISSING
    act = f"{r.get('activation_type')} {'symmetric' if r.get('symmetric_activations') else 'asymmetric'}"
    weights = f"{r.get('weight_type')} {'symmetric' if r.get('symmetric_weights') else 'asymmetric'}, "
    weights += "per channel" if r.get("per_channel") else "per tensor"
    parts = [f"target {r.get('target')}", f"weights {weights}", f"format {r.get('format', 'qdq')}"]
    if r.get("dynamic"):
        parts.insert(1, "activations quantized at run time (dynamic)")
    else:
        parts.insert(1, f"activations {act}")
    if r.get("passes"):
        parts.append("passes: " + ", ".join(r["passes"]))
    excluded = [*r.get("exclude_nodes", []), *r.get("exclude_op_types", [])]
    if excluded:
        parts.append("excluded: " + ", ".join(excluded))
    return "; ".join(parts)


def calibration_text(summary: dict[str, Any]) -> str:
    r = summary.get("recipe") or {}
    if r.get("dynamic"):
        return "none (dynamic quantization)"
    method = str(r.get("method", MISSING)) + (f" {r['percentile']:g}" if r.get("method") == "percentile" else "")
    batch = summary.get("calib_batch_size")
    return f"{method}, {summary.get('calib_samples', MISSING)} samples" + (f", batches of {batch}" if batch else "")


def quantized_ops_table(summary: dict[str, Any]) -> Table:
    """Op type and count, most first (ties by name), and a total row."""
    counts = summary.get("op_counts") or {}
    rows = [[op, str(n)] for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    rows.append(["total", str(summary.get("nodes_quantized", sum(counts.values())))])
    return ["op type", "nodes quantized"], rows


def reason_table(node_reasons: dict[str, str], count_header: str) -> Table:
    """``{node: reason}`` grouped by reason, most frequent first, with a few of the nodes' names."""
    rows = []
    for reason, n, examples in group_by_reason(node_reasons, EXAMPLE_NODES):
        more = f" and {n - len(examples)} more" if n > len(examples) else ""
        rows.append([reason, str(n), ", ".join(examples) + more])
    return ["reason", count_header, "nodes"], rows


def passes_table(summary: dict[str, Any]) -> Table:
    """Each pass: its time, whether it changed the model, and its non-zero details as 'name value' pairs."""
    rows = []
    for entry in summary.get("passes") or []:
        changed = {True: "yes", False: "no"}.get(entry.get("modified"), MISSING)
        rows.append([str(entry.get("pass", "?")), _seconds(entry.get("seconds")), changed, effect_text(entry)])
    return ["pass", "time", "changed the model", "what it did"], rows


def effect_text(entry: dict[str, Any]) -> str:
    """A pass's details without zeros, empties and per-node lists: 'batchnorm folded 17; converted: Conv 6'."""
    parts = []
    for key, value in entry.items():
        if key in LISTED_ELSEWHERE or value in (0, None, False, "", [], {}):
            continue
        name = key.replace("_", " ")
        if isinstance(value, dict):
            parts.append(f"{name}: " + ", ".join(f"{k} {_value(v)}" for k, v in value.items()))
        elif isinstance(value, list):
            parts.append(f"{name}: " + ", ".join(map(str, value)))
        else:
            parts.append(f"{name} {_value(value)}")
    return "; ".join(parts) or "nothing to do"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return fmt_num(v)
    return str(v)


def _seconds(s: float | None) -> str:
    return MISSING if s is None else f"{s:.2f} s"
