"""The sweep's report: one JSON document (schema ``onnxq.sweep/1``), and the same as HTML and Markdown.

The JSON follows ``onnxq/report/schemas/sweep.schema.json`` (JSON Schema draft 2020-12). A new major version
is used for any change that removes or renames a key or changes its meaning; new optional keys may appear
within a version. Times are in seconds unless the key ends in ``_ms``, sizes in bytes, accuracies and
agreements are fractions; NaN and infinity are written as null.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from onnxq import __version__
from onnxq.sweep.cache import write_json_atomic, write_text_atomic
from onnxq.sweep.plan import Cell
from onnxq.sweep.results import build_rows, cell_status, cell_tasks, mark_pareto, pick_winners
from onnxq.sweep.scheduler import TaskState
from onnxq.sweep.spec import SweepSpec

SCHEMA_ID = "onnxq.sweep/1"
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "report" / "schemas" / "sweep.schema.json"
REPORT_NAMES = {"json": "sweep.json", "html": "sweep.html", "md": "sweep.md"}


def build_sweep_report(spec: SweepSpec, cells: list[Cell], states: dict[str, TaskState], *,
                       executor: dict[str, Any], wall_s: float, executed: dict[str, int],
                       command: list[str] | None = None, environment: dict[str, Any] | None = None
                       ) -> dict[str, Any]:  # fmt: skip
    """The report dict: the spec as read, the executor and its nodes, a summary, cells, rows and winners."""
    from onnxq.report.environment import collect_environment
    from onnxq.sweep.tasks import plain

    rows = build_rows(spec, cells, states)
    mark_pareto(rows)
    winners = pick_winners(rows, spec.target)
    cell_docs = [_cell_doc(c, cell_tasks(c, states)) for c in cells]
    return plain({
        "schema": SCHEMA_ID,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "onnxq_version": __version__,
        "command": [str(a) for a in (command or [])],
        "environment": environment if environment is not None else collect_environment(),
        "spec": spec.to_dict(),
        "executor": executor,
        "wall_s": round(wall_s, 3),
        "summary": _summary(cell_docs, states, executed),
        "cells": cell_docs,
        "results": rows,
        "winners": winners,
    })  # fmt: skip


def _summary(cells: list[dict[str, Any]], states: dict[str, TaskState], executed: dict[str, int]) -> dict[str, Any]:
    return {
        "cells": len(cells),
        "done": sum(c["status"] == "done" for c in cells),
        "failed": sum(c["status"] == "failed" for c in cells),
        "tasks": len(states),
        "cached": sum(s.cached for s in states.values()),
        "executed": dict(executed),
        "retried": sum(max(0, s.attempts - 1) for s in states.values()),
    }


def _cell_doc(cell: Cell, tasks: list[TaskState]) -> dict[str, Any]:
    quantize = next((s for s in tasks if s.task.stage == "quantize"), None)
    done_q = quantize is not None and quantize.status == "done" and quantize.record is not None
    return {
        "model": cell.model.name,
        "recipe": cell.recipe_name,
        "status": cell_status(tasks),
        "float_model_path": str(cell.model.path),
        "quantize": quantize.record["result"] if done_q else None,
        "model_key": quantize.key if done_q else None,
        "errors": [{"task": s.task.id, **s.error} for s in tasks if s.error],
        "tasks": [_task_doc(s) for s in tasks],
    }


def _task_doc(s: TaskState) -> dict[str, Any]:
    record = s.record or {}
    worker = record.get("worker") or {}
    return {
        "id": s.task.id,
        "stage": s.task.stage,
        "ep": s.task.ep,
        "status": s.status,
        "cached": s.cached,
        "attempts": s.attempts,
        "lost": list(s.lost),
        "node": record.get("node"),
        "node_id": record.get("node_id"),
        "host": worker.get("host"),
        "pid": worker.get("pid"),
        "wall_s": record.get("wall_s"),
        "started": record.get("started"),
        "ended": record.get("ended"),
        "key": s.key,
        "warnings": record.get("warnings") or [],
    }


def write_sweep_reports(out: Path, report: dict[str, Any]) -> dict[str, Path]:
    """sweep.json, sweep.html and sweep.md in ``out``, each written atomically; their paths by format."""
    from onnxq.sweep.render import render_sweep_html, render_sweep_markdown

    paths = {fmt: out / name for fmt, name in REPORT_NAMES.items()}
    write_json_atomic(paths["json"], report)
    write_text_atomic(paths["html"], render_sweep_html(report))
    write_text_atomic(paths["md"], render_sweep_markdown(report))
    return paths
