"""The child processes of bench/quantize_vs_ort.py: one quantization each, by onnxq or by ORT.

``python bench/quantize_children.py --worker TOOL MODEL CALIB OUT METHOD RESULT OPTIONS`` quantizes MODEL
with TOOL (onnxq or ort) and the calibration samples in CALIB (.npz), writes OUT and a JSON result (the
time of the quantize call alone, the peak RSS, or the error). :func:`run_child` starts one and adds its
wall time, so interpreter start-up and imports are counted for both tools alike.

Peak RSS is the child's own VmHWM, which starts afresh at exec. ``os.wait4``'s ``ru_maxrss`` would not do:
the kernel folds the parent's high-water mark into the child's, so a child of a 400 MiB parent reports
437 MiB there while peaking at 14 MiB (measured).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PERCENTILE = 99.999  # ORT's default CalibPercentile; onnxq is given the same


def worker_onnxq(model: str, calib: str, out: str, method: str, options: dict[str, Any]) -> dict[str, Any]:
    from onnxq.quantize.driver import quantize
    from onnxq.quantize.recipe import QuantizeRecipe

    recipe = QuantizeRecipe.from_dict({"method": method, "percentile": PERCENTILE, **options})
    t0 = time.perf_counter()
    summary = quantize(model, out, calib, recipe)
    took = time.perf_counter() - t0
    return {"quantize_s": took, "calib_samples": summary.calib_samples, "skipped": sorted(summary.skipped)}


def worker_ort(model: str, calib: str, out: str, method: str, options: dict[str, Any]) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    with np.load(calib, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    n = len(next(iter(arrays.values())))

    class Reader(CalibrationDataReader):  # one sample per get_next, as onnxq's default batch of 1
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= n:
                return None
            self.i += 1
            return {k: v[self.i - 1 : self.i] for k, v in arrays.items()}

    calib_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    t0 = time.perf_counter()
    quantize_static(
        model,
        out,
        Reader(),
        quant_format=QuantFormat.QOperator if options.get("format") == "qoperator" else QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calib_method,
        extra_options={"CalibPercentile": PERCENTILE},
    )
    took = time.perf_counter() - t0
    return {"quantize_s": took, "calib_samples": n, "opset": opset_of(onnx.load(out, load_external_data=False))}


def first_line(exc: BaseException) -> str:
    """'Type: first line of the message' (ORT's C++ errors carry long traces; some messages are empty)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:600]}" if lines else type(exc).__name__


def opset_of(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def worker_main(argv: list[str]) -> int:
    """``--worker TOOL MODEL CALIB OUT METHOD RESULT OPTIONS``: quantize, write a JSON result, exit 0 (1 on
    error). OPTIONS is a JSON object of extra onnxq recipe options (``{}`` for none); ORT reads only
    ``format`` (``qoperator``: QuantFormat.QOperator instead of QDQ)."""
    tool, model, calib, out, method, result, options = argv
    try:
        res = (worker_onnxq if tool == "onnxq" else worker_ort)(model, calib, out, method, json.loads(options))
        res["ok"] = True
    except Exception as exc:  # reported in the table: what failed is a result of this benchmark
        res = {"ok": False, "error": first_line(exc)}
    from onnxq.report.environment import peak_rss_bytes

    res["peak_rss_bytes"] = peak_rss_bytes()  # VmHWM of this process since exec: see run_child
    Path(result).write_text(json.dumps(res))
    return 0 if res["ok"] else 1


def run_child(
    tool: str, model: Path, calib: Path, out: Path, method: str, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run one quantization in a fresh interpreter; its wall time, peak RSS and its own result."""
    result = out.with_suffix(".json")
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", tool, str(model), str(calib), str(out), method, str(result)]
    cmd.append(json.dumps(options or {}))
    env = dict(os.environ, OMP_NUM_THREADS="2")
    with open(out.with_suffix(".log"), "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it a second time
    res = json.loads(result.read_text()) if result.exists() else {"ok": False, "error": "no result"}
    if not res.get("ok") and res.get("error") == "no result":
        res["error"] = f"exit {proc.returncode}: " + out.with_suffix(".log").read_text()[-300:]
    # Not usage.ru_maxrss: the kernel folds the parent's high-water mark into the child's at fork/exec,
    # so a child of this (large) process would inherit its peak. The child's own VmHWM starts at exec.
    res["wall_s"] = wall
    res["ru_maxrss_bytes"] = usage.ru_maxrss * 1024
    return res


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"]:
        sys.exit("usage: quantize_children.py --worker TOOL MODEL CALIB OUT METHOD RESULT OPTIONS")
    sys.exit(worker_main(sys.argv[2:]))
