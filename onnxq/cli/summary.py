"""Human-readable summaries printed by the CLI."""

from __future__ import annotations

from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


MAX_NAMES = 5  # names shown in one line of the summary; --json has them all


def format_quantize_summary(s) -> str:
    """The end-of-run summary of ``onnxq quantize``: what was quantized, skipped, sizes and times. Long lists of
    names end in "... and N more" (the JSON summary has them all); numbers are rounded to 4 digits."""
    r = s.recipe
    how = (
        "dynamic (activations quantized at run time, no calibration)"
        if r.get("dynamic")
        else f"method={r['method']} calibration samples={s.calib_samples} batch={s.calib_batch_size}"
    )
    recipe_line = (
        f"  recipe: target={r['target']} activations={r['activation_type']} weights={r['weight_type']} "
        f"{'per-channel' if r['per_channel'] else 'per-tensor'} {how}"
    )
    if r.get("weight_only"):
        wo = next(e for e in s.passes if e.get("pass") == "weight-only")
        level = f" accuracy_level={wo['accuracy_level']}" if wo.get("accuracy_level") is not None else ""
        data = f" calibration samples={s.calib_samples}" if s.calib_samples else " (no calibration data)"
        recipe_line = (f"  recipe: weight-only {r['weight_only']} block={r['block_size']} algorithm={r['algorithm']}"
                       f" format={r['weight_format']}{level}; activations float{data}")  # fmt: skip
    lines = [
        f"quantized {s.input_path} -> {s.output_path}",
        recipe_line,
        *([f"  preset: {s.preset}"] if getattr(s, "preset", "") else []),
        *_node_lines(s),
        *_skipped_lines(s.skipped),
    ]
    for entry in s.passes:
        if entry.get("pass") not in ("qdq",):
            lines.append(f"  pass {entry['pass']}: {_pass_details(entry)}")
    for entry in s.passes:
        if entry.get("pass") == "qoperator":
            lines.extend(format_qoperator_lines(entry.get("converted", {}), entry.get("kept_qdq", {})))
        for where, what in (entry.get("subgraphs") or {}).items():
            lines.append(f"  subgraph {where}: {what}")
    ratio = s.size_before / s.size_after if s.size_after else float("nan")
    change = f"{ratio:.2f}x smaller" if not ratio < 1 else f"{1 / ratio:.2f}x larger"  # tiny models grow
    lines.append(f"  size: {human_bytes(s.size_before)} -> {human_bytes(s.size_after)} ({change})")
    t = s.timings
    lines.append("  time: " + ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in t.items()))
    lines.extend(f"  note: {n}" for n in getattr(s, "notes", []))
    for w in s.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def format_qoperator_lines(converted: dict[str, int], kept: dict[str, str]) -> list[str]:
    """What the QOperator conversion rewrote, and each reason a node stayed in QDQ form."""
    from onnxq.quantize.convert import group_by_reason

    lines = ["  converted: " + (", ".join(f"{k} {n}" for k, n in converted.items()) or "nothing")]
    lines.append(f"  kept in QDQ form: {len(kept)}")
    for reason, n, examples in group_by_reason(kept):
        lines.append(f"    {n} x {reason} (e.g. {', '.join(examples)})")
    return lines


def _node_lines(s) -> list[str]:
    """Quantized nodes of the input model by op type, and what prepare's rewrites removed and made."""
    c = s.node_counts
    if c is None:  # dynamic quantization: the MatMul/Gemm/Gather nodes it rewrote
        return [f"  nodes quantized: {s.nodes_quantized} ({_counts(s.op_counts)})"]
    folded = c["folded"]
    ops = ", ".join(
        f"{op} {n}" + ("" if op not in folded else " (folded into the node before)" if folded[op] == n
                       else f" ({folded[op]} folded into the node before)")
        for op, n in c["quantized"].items()
    )
    lines = [f"  nodes quantized: {s.nodes_quantized} of the input model's {c['in_model']} ({ops or 'none'})"]
    if c["removed_by_prepare"] or c["made_by_prepare"]:
        lines.append(
            f"  prepare's rewrites: removed or replaced {_counts(c['removed_by_prepare']) or 'none'}; "
            f"made {sum(c['made_by_prepare'].values())} that are quantized too ({_counts(c['made_by_prepare']) or '-'})"
        )
    return lines


def _skipped_lines(skipped: dict[str, str]) -> list[str]:
    if not skipped:
        return ["  nodes skipped: 0"]
    from onnxq.quantize.convert import group_by_reason

    lines = [f"  nodes skipped: {len(skipped)}"]
    for reason, n, examples in group_by_reason(skipped):
        lines.append(f"    {n} x {reason} (e.g. {', '.join(examples)})")
    return lines


def format_convert_summary(s) -> str:
    """The end-of-run summary of ``onnxq convert``."""
    check = s.check
    worst = min((o["sqnr_db"] for o in check["outputs"].values() if o["sqnr_db"] is not None), default=None)
    limit = check["min_sqnr_db"]
    verdict = "bit-exact" if worst is None else f"within tolerance (SQNR >= {worst:.1f} dB, limit {limit:g} dB)"
    lines = [f"converted {s.input_path} -> {s.output_path} ({s.format}): {s.nodes_converted} nodes"]
    lines += format_qoperator_lines(s.converted, s.kept_qdq)
    for name, o in check["outputs"].items():
        lines.append(f"  check {name}: {o['different']} of {o['elements']} values differ from the QDQ model's, "
                     f"largest by {o['max_abs_diff']:.3g}")  # fmt: skip
    lines.append(f"  outputs vs the QDQ model in ONNX Runtime: {verdict}, on {check['inputs']}")
    ratio = s.size_before / s.size_after if s.size_after else float("nan")
    lines.append(f"  size: {human_bytes(s.size_before)} -> {human_bytes(s.size_after)} ({ratio:.2f}x smaller)")
    return "\n".join(lines)


def _pass_details(entry: dict[str, Any]) -> str:
    """``key=value`` of a pass's log entry: lists shortened, floats to 4 significant digits; mappings (per-layer
    records) are left to the JSON."""
    shown = []
    for k, v in entry.items():
        if k in ("pass", "seconds", "modified") or v in (0, None, False, "", [], {}) or isinstance(v, dict):
            continue
        shown.append(f"{k}={_value(v)}")
    return ", ".join(shown)


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return shortened([str(x) for x in v])
    return str(v)


def shortened(names: list[str], limit: int = MAX_NAMES) -> str:
    """``n (a, b, c, d, e ... and n-5 more)`` for a long list of names, the names for a short one."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{len(names)} ({', '.join(names[:limit])} ... and {len(names) - limit} more)"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1]))
