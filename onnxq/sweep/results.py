"""From finished tasks to the sweep's results: one row per (model, recipe, EP, batch), Pareto fronts, winners.

A row joins a cell's quantization (size), its evaluation on the EP (top-1, and against the float model on the
same EP: top-1 agreement, SQNR and cosine of the first output) and its benchmark at the batch (p50, p90,
p99, cv), with the float cell's numbers as the baseline: ``top1_drop`` (float top-1 minus the recipe's, on
the same EP), ``size_ratio`` (float size over the recipe's) and ``speedup_vs_float`` (float p50 over the
recipe's, only when both were benchmarked on machines with the same CPU model and core count; else None).

The Pareto front of a (model, EP, batch) holds the recipes that no other recipe beats on both latency and
SQNR. The winner under the spec's target is, among the recipes that meet every constraint, the best by the
target's ``optimize`` (ties: the recipe listed first in the spec); where none meets it, the reason says
what each missed.
"""

from __future__ import annotations

from typing import Any

from onnxq.sweep.plan import Cell
from onnxq.sweep.scheduler import TaskState
from onnxq.sweep.spec import FLOAT, SweepSpec, Target

OPTIMIZE_KEYS = {"latency": ("p50_ms", min), "size": ("size_bytes", min), "sqnr": ("sqnr_db", max),
                 "agreement": ("agreement", max), "top1": ("top1", max)}  # fmt: skip


def cell_tasks(cell: Cell, states: dict[str, TaskState]) -> list[TaskState]:
    return [s for s in states.values() if s.task.cell == cell]


def cell_status(tasks: list[TaskState]) -> str:
    """done (every task done), failed (one failed or was skipped), running, or pending."""
    if any(s.status in ("failed", "skipped") for s in tasks):
        return "failed"
    if all(s.status == "done" for s in tasks):
        return "done"
    return "running" if any(s.status == "running" for s in tasks) else "pending"


def _result(tasks: list[TaskState], stage: str, ep: str | None = None) -> tuple[dict | None, TaskState | None]:
    s = next((s for s in tasks if s.task.stage == stage and s.task.ep == ep), None)
    if s is None or s.status != "done" or s.record is None:
        return None, s
    return s.record["result"], s


def build_rows(spec: SweepSpec, cells: list[Cell], states: dict[str, TaskState]) -> list[dict[str, Any]]:
    """Every (model, recipe, EP, batch) row in plan order; a failed cell's rows carry its first error."""
    rows: list[dict[str, Any]] = []
    batches = spec.batches if "latency" in spec.metrics else (None,)
    for cell in cells:
        tasks = cell_tasks(cell, states)
        quantized, q_state = _result(tasks, "quantize")
        error = next((s.error["error"] for s in tasks if s.error and s.status == "failed"), None)
        error = error or next((s.error["error"] for s in tasks if s.error), None)
        for ep in spec.eps:
            ev, ev_state = _result(tasks, "eval", ep)
            bench, b_state = _result(tasks, "bench", ep)
            for i, batch in enumerate(batches):
                row = _row(cell, ep, batch, quantized, ev, (bench or {}).get("entries", [None] * (i + 1))[i])
                row.update(status=cell_status(tasks), error=error,
                           nodes={k: s.record["node"] for k, s in (("quantize", q_state), ("eval", ev_state),
                                  ("bench", b_state)) if s is not None and s.record})  # fmt: skip
                rows.append(row)
    _add_baselines(rows, states)
    return rows


def _row(cell: Cell, ep: str, batch: int | None, quantized: dict | None, ev: dict | None,
         bench: dict | None) -> dict[str, Any]:  # fmt: skip
    fid = ((ev or {}).get("fidelity") or {}).get("outputs") or [{}]
    lat = (bench or {}).get("latency_ms") or {}
    size = quantized["size_bytes"] if quantized else (bench or {}).get("size_bytes")
    if cell.recipe is None and size is None:
        size = cell.model.path.stat().st_size
    return {
        "model": cell.model.name, "recipe": cell.recipe_name, "ep": ep,
        "batch": (bench or {}).get("batch", batch), "size_bytes": size, "size_ratio": None,
        "top1": ((ev or {}).get("accuracy") or {}).get("top1"), "top1_drop": None,
        "agreement": fid[0].get("top1_agreement"), "sqnr_db": fid[0].get("sqnr_db"),
        "cosine": (fid[0].get("cosine") or {}).get("overall"),
        "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
        "cv": (bench or {}).get("cv"), "runs": (bench or {}).get("runs"), "speedup_vs_float": None,
        "quantize_s": (quantized or {}).get("quantize_s"), "nodes_quantized": (quantized or {}).get("nodes_quantized"),
        "bench_machine": None,
    }  # fmt: skip


def _add_baselines(rows: list[dict[str, Any]], states: dict[str, TaskState]) -> None:
    """Ratios against the float row of the same model, EP and batch."""
    machines = {(s.task.cell.name, s.task.ep): _machine(s) for s in states.values() if s.task.stage == "bench"}
    floats = {(r["model"], r["ep"], r["batch"]): r for r in rows if r["recipe"] == FLOAT}
    for r in rows:
        base = floats.get((r["model"], r["ep"], r["batch"]))
        r["bench_machine"] = machines.get((f"{r['model']}/{r['recipe']}", r["ep"]))
        if base is None or r is base:
            continue
        if r["size_bytes"] and base["size_bytes"]:
            r["size_ratio"] = base["size_bytes"] / r["size_bytes"]
        if r["top1"] is not None and base["top1"] is not None:
            r["top1_drop"] = base["top1"] - r["top1"]
        same = r["bench_machine"] is not None and r["bench_machine"] == machines.get((f"{r['model']}/{FLOAT}", r["ep"]))
        if r["p50_ms"] and base["p50_ms"] and same:
            r["speedup_vs_float"] = base["p50_ms"] / r["p50_ms"]


def _machine(s: TaskState) -> str | None:
    worker = (s.record or {}).get("worker") or {}
    if s.status != "done" or not worker:
        return None
    return f"{worker.get('cpu_model')} x{worker.get('cores')}"


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """``pareto``: on the front of its (model, EP, batch) for lower p50 and higher SQNR (recipes only)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        r["pareto"] = False
        if r["recipe"] != FLOAT and r["status"] == "done" and r["p50_ms"] is not None and r["sqnr_db"] is not None:
            groups.setdefault((r["model"], r["ep"], r["batch"]), []).append(r)
    for group in groups.values():
        for r in group:
            r["pareto"] = not any(_dominates(o, r) for o in group if o is not r)


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    no_worse = a["p50_ms"] <= b["p50_ms"] and a["sqnr_db"] >= b["sqnr_db"]
    return no_worse and (a["p50_ms"] < b["p50_ms"] or a["sqnr_db"] > b["sqnr_db"])


def target_misses(row: dict[str, Any], target: Target) -> list[str]:
    """What ``row`` misses of ``target`` (empty: it meets it); an unmeasured value misses its constraint."""
    checks = (("min_top1", "top1", ">=", "top-1"), ("max_top1_drop", "top1_drop", "<=", "top-1 drop"),
              ("min_agreement", "agreement", ">=", "agreement"), ("min_sqnr_db", "sqnr_db", ">=", "SQNR dB"),
              ("max_latency_ms", "p50_ms", "<=", "p50 ms"), ("min_speedup", "speedup_vs_float", ">=", "speedup"),
              ("max_size_bytes", "size_bytes", "<=", "size"))  # fmt: skip
    misses = []
    for key, column, op, label in checks:
        limit, value = getattr(target, key), row.get(column)
        if limit is None:
            continue
        if value is None:
            misses.append(f"{label} not measured")
        elif (value < limit) if op == ">=" else (value > limit):
            misses.append(f"{label} {value:.4g} {'<' if op == '>=' else '>'} {limit:g}")
    return misses


def pick_winners(rows: list[dict[str, Any]], target: Target | None) -> list[dict[str, Any]]:
    """Per (model, EP, batch): the winning recipe under ``target`` and why; [] without a target. Each recipe row
    gets its ``target_misses``."""
    if target is None:
        return []
    column, best = OPTIMIZE_KEYS[target.optimize]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["recipe"] != FLOAT:
            r["target_misses"] = ["the cell failed"] if r["status"] != "done" else target_misses(r, target)
            groups.setdefault((r["model"], r["ep"], r["batch"]), []).append(r)
    winners = []
    for (model, ep, batch), group in groups.items():
        meets = [r for r in group if not r["target_misses"] and r.get(column) is not None]
        entry = {"model": model, "ep": ep, "batch": batch, "recipe": None, "value": None, "optimize": target.optimize}
        if meets:
            won = best(meets, key=lambda r: r[column])  # min/max keep the first of equals: spec order
            why = f"best {target.optimize} of the {len(meets)} recipe(s) that meet the target"
            entry.update(recipe=won["recipe"], value=won[column], reason=why)
        else:
            entry["reason"] = "no recipe meets the target: " + "; ".join(
                f"{r['recipe']}: {', '.join(r['target_misses'][:2])}" for r in group)  # fmt: skip
        winners.append(entry)
    return winners
