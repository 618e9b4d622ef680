"""``onnxq bench --profile``: ORT's per-node profiler, summarised as the op types that take the time, per EP.

After a model's timed rounds, a session of its own with ORT's profiler on (``SessionOptions.enable_profiling``,
made by :func:`onnxq.runtime.session.profiled_runs`) runs the same feeds ``runs + 1`` times; the first run is
left out (first-run allocations and kernel choices). Each node's kernel time (its ``*_kernel_time`` event) is
summed per (op type, EP). The op types are those of the graph ORT runs, after its optimizations at the
session's ``--opt-level``: fused nodes appear as ORT names them (``QLinearConv`` for a DQ -> Conv -> Q group,
``FusedConv``), layout changes as ``ReorderInput``/``ReorderOutput``; ``--opt-level disable`` shows the
model's own nodes. Shares are of the summed kernel time. The profiler adds its own cost to every node (on
the sample models' 0.02 ms runs, the kernel times sum to more than the unprofiled latency), so the shares
say where the time goes and the absolute times are upper bounds.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

TOP_OPS = 10  # op types listed per entry


def summarize_profile(events: list[dict[str, Any]], runs: int, top: int = TOP_OPS) -> dict[str, Any]:
    """The profile entry of a trace covering ``runs + 1`` runs, the first of which is left out."""
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    after = starts[1] if len(starts) > 1 else None
    totals: dict[tuple[str, str], float] = defaultdict(float)
    nodes: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in events:
        args = e.get("args") or {}
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or "provider" not in args:
            continue
        if after is not None and e.get("ts", 0) < after:
            continue  # the first, unmeasured run
        key = (str(args.get("op_name", "?")), str(args["provider"]))
        totals[key] += float(e.get("dur", 0)) / 1e3  # microseconds -> ms
        nodes[key].add(name.removesuffix("_kernel_time"))
    total = sum(totals.values())
    per_ep: dict[str, float] = defaultdict(float)
    for (_, ep), ms in totals.items():
        per_ep[ep] += ms
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    return {
        "runs": runs,
        "kernel_ms_per_run": total / runs if runs else 0.0,
        "by_ep": {ep: {"ms_per_run": ms / runs, "share": ms / total if total else 0.0} for ep, ms in per_ep.items()},
        "top_ops": [
            {
                "op_type": op,
                "ep": ep,
                "nodes": len(nodes[(op, ep)]),
                "ms_per_run": ms / runs,
                "share": ms / total if total else 0.0,
            }
            for (op, ep), ms in ranked[:top]
        ],  # fmt: skip
        "op_types": len(ranked),
        "file": None,
    }


def keep_trace(trace: Path, folder: Path | None, name: str) -> str | None:
    """Copy the trace to ``folder`` as ``name`` (the report's side folder) and return its path; None without one."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copyfile(trace, target)
    return str(target)


def format_profile(entry: dict[str, Any]) -> list[str]:
    """Text lines for a bench entry's profile: kernel time per EP, then the top op types."""
    prof = entry["profile"]
    eps = ", ".join(
        f"{ep.removesuffix('ExecutionProvider')} {100 * v['share']:.1f}%" for ep, v in prof["by_ep"].items()
    )
    lines = [
        f"profile: {entry['model']} on {entry['ep']}, batch {entry['batch']}: {prof['kernel_ms_per_run']:.4g} ms of "
        f"kernels per run over {prof['runs']} runs (p50 latency {entry['latency_ms']['p50']:.4g} ms); {eps}"
    ]
    for op in prof["top_ops"]:
        lines.append(
            f"  {op['op_type']:<24} {op['ep'].removesuffix('ExecutionProvider'):<8} {op['nodes']:>4} nodes  "
            f"{op['ms_per_run']:.4g} ms/run  {100 * op['share']:5.1f}%"
        )
    if prof["op_types"] > len(prof["top_ops"]):
        lines.append(f"  ... and {prof['op_types'] - len(prof['top_ops'])} more op types")
    if prof["file"]:
        lines.append(f"  ORT's trace: {prof['file']}")
    return lines
