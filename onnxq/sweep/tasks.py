"""What a sweep worker runs: one task (quantize a cell, evaluate it on an EP, or benchmark it on an EP).

A task is a plain dict (``payload``) so that it crosses any process boundary: a pipe, a Ray task. Its paths
are absolute and must name the same files on every node (a shared filesystem: see the README). The worker
calls the public APIs (:func:`onnxq.quantize.driver.quantize`, :func:`onnxq.measure.evaluate.evaluate`,
:func:`onnxq.measure.bench.bench_models`); sessions are created there, never here.

:func:`run_task` never raises for what a task can get wrong: a user error (OnnxqError) or a bug comes back as
``{"ok": False, "error", "hint"}`` (a bug with its traceback), so that one failing cell is recorded and the
others go on. Python warnings raised during the task come back in ``warnings``. While it runs, the worker
keeps a marker file (``payload["marker"]``: task, host, pid) that says who runs what.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxq.errors import DataError, OnnxqError


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run ``payload`` here; the reply: ``ok``, ``result`` or ``error``/``hint``, ``worker``, ``wall_s``, and
    ``started``/``ended`` (Unix time on the worker's clock)."""
    marker = Path(payload["marker"]) if payload.get("marker") else None
    if marker is not None:
        _write_marker(marker, payload)
    start, started = time.perf_counter(), time.time()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            reply = _run_stage(payload)
        reply["warnings"] = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    reply.update(worker=worker_identity(), wall_s=round(time.perf_counter() - start, 3), started=started,
                 ended=time.time())  # fmt: skip
    return reply


def _run_stage(payload: dict[str, Any]) -> dict[str, Any]:
    try:
        _require_visible(payload)
        return {"ok": True, "result": plain(STAGES[payload["stage"]](payload))}
    except OnnxqError as exc:
        return {"ok": False, "error": exc.message, "hint": exc.hint}
    except Exception as exc:  # a bug: recorded with its traceback, and the sweep goes on
        return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}",
                "hint": "this is an onnxq bug: report it with the traceback in the sweep's report",
                "traceback": traceback.format_exc()}  # fmt: skip


@functools.cache
def _machine() -> dict[str, Any]:
    from onnxq.report.environment import cpu_model

    return {"host": socket.gethostname(), "cpu_model": cpu_model(), "cores": os.cpu_count()}


def worker_identity() -> dict[str, Any]:
    """Which machine and process ran a task: host, CPU model, cores, pid."""
    return {**_machine(), "pid": os.getpid()}


def _write_marker(marker: Path, payload: dict[str, Any]) -> None:
    from onnxq.sweep.cache import write_json_atomic

    write_json_atomic(marker, {"task": payload["task"], "started": time.time(), **worker_identity()})


def _require_visible(payload: dict[str, Any]) -> None:
    """The task's inputs and OUT must be on this node: a sweep over several machines needs a shared path."""
    for key in ("model_path", "calib", "data", "reference", "out_dir"):
        path = payload.get(key)
        if path is not None and not os.path.exists(path):
            raise DataError(f"{key.replace('_', ' ')} {path} does not exist on {socket.gethostname()}",
                            hint="on a cluster, the spec's files and --out must be on a filesystem every node mounts "
                            "at the same path")  # fmt: skip


def _quantize(p: dict[str, Any]) -> dict[str, Any]:
    from onnxq.quantize.driver import quantize
    from onnxq.quantize.recipe import QuantizeRecipe
    from onnxq.sweep.cache import model_sha256

    recipe = QuantizeRecipe.from_dict(p["recipe"], where=f"recipe {p['recipe_name']}")
    summary = quantize(p["model_path"], p["out"], p["calib"], recipe)
    return {
        "model_sha256": model_sha256(Path(p["out"])),
        "size_before": summary.size_before,
        "size_bytes": summary.size_after,
        "nodes_quantized": summary.nodes_quantized,
        "nodes_skipped": len(summary.skipped),
        "op_counts": summary.op_counts,
        "calib_samples": summary.calib_samples,
        "quantize_s": summary.timings.get("total_s"),
        "summary_warnings": summary.warnings,
    }


def _evaluate(p: dict[str, Any]) -> dict[str, Any]:
    from onnxq.measure.evaluate import evaluate

    return evaluate(p["model_path"], p["data"], labels_key=p["labels"], reference=p["reference"], ep=p["ep"],
                    allow_fallback=p["allow_fallback"])  # fmt: skip


def _bench(p: dict[str, Any]) -> dict[str, Any]:
    from onnxq.measure.bench import BenchConfig, bench_models

    b = p["bench"]
    config = BenchConfig(eps=(p["ep"],), batches=tuple(p["batches"]), threads=b["threads"], runs=b["runs"],
                         warmup_runs=b["warmup"], duration_s=b["duration_s"], data=p["data"],
                         allow_fallback=p["allow_fallback"])  # fmt: skip
    return {"entries": bench_models([p["model_path"]], config)}


STAGES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "quantize": _quantize,
    "eval": _evaluate,
    "bench": _bench,
}


def plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays as numbers and lists, tuples as lists, NaN and infinity as None."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
