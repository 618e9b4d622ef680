"""Human-readable summaries printed by the CLI."""

from __future__ import annotations

from collections import Counter


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_quantize_summary(s) -> str:
    """The end-of-run summary of ``onnxq quantize``: what was quantized, skipped, sizes and times."""
    r = s.recipe
    how = (
        "dynamic (activations quantized at run time, no calibration)"
        if r.get("dynamic")
        else f"method={r['method']} calibration samples={s.calib_samples} batch={s.calib_batch_size}"
    )
    lines = [
        f"quantized {s.input_path} -> {s.output_path}",
        f"  recipe: target={r['target']} activations={r['activation_type']} weights={r['weight_type']} "
        f"{'per-channel' if r['per_channel'] else 'per-tensor'} {how}",
        f"  nodes quantized: {s.nodes_quantized} ("
        + ", ".join(f"{op} {n}" for op, n in sorted(s.op_counts.items(), key=lambda kv: -kv[1]))
        + ")",
    ]
    if s.skipped:
        reasons = Counter(s.skipped.values())
        lines.append(f"  nodes skipped: {len(s.skipped)}")
        for reason, n in reasons.most_common():
            examples = [k for k, v in s.skipped.items() if v == reason][:3]
            lines.append(f"    {n} x {reason} (e.g. {', '.join(examples)})")
    else:
        lines.append("  nodes skipped: 0")
    for entry in s.passes:
        if entry.get("pass") not in ("qdq",):
            extra = ", ".join(
                f"{k}={v}"
                for k, v in entry.items()
                if k not in ("pass", "seconds", "modified")
                and v not in (0, None, False, "", [], {})
                and not isinstance(v, dict)
            )
            lines.append(f"  pass {entry['pass']}: {extra}")
    for entry in s.passes:
        if entry.get("pass") == "qoperator":
            lines.extend(format_qoperator_lines(entry.get("converted", {}), entry.get("kept_qdq", {})))
        for where, what in (entry.get("subgraphs") or {}).items():
            lines.append(f"  subgraph {where}: {what}")
    ratio = s.size_before / s.size_after if s.size_after else float("nan")
    lines.append(
        f"  size: {human_bytes(s.size_before)} -> {human_bytes(s.size_after)} ({ratio:.2f}x smaller)"
    )
    t = s.timings
    lines.append("  time: " + ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in t.items()))
    for w in s.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def format_qoperator_lines(converted: dict[str, int], kept: dict[str, str]) -> list[str]:
    """What the QOperator conversion rewrote, and each reason a node stayed in QDQ form."""
    from onnxq.quantize.convert import iter_kept_reasons

    lines = ["  converted: " + (", ".join(f"{k} {n}" for k, n in converted.items()) or "nothing")]
    lines.append(f"  kept in QDQ form: {len(kept)}")
    for reason, n, examples in iter_kept_reasons(kept):
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
