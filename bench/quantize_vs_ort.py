"""onnxq quantize side by side with onnxruntime.quantization.quantize_static (issue 3's benchmark).

For each model and calibration method, both tools quantize the same float model with the same
calibration samples, each in a child process of its own (bench/quantize_children.py: wall time with
start-up and imports, peak RSS as the child's VmHWM, the quantize call's own time): onnxq through
``onnxq.quantize.driver.quantize``, ORT through ``quantize_static(QuantFormat.QDQ, per_channel=True, activation QUInt8,
weight QInt8)`` with a CalibrationDataReader that yields one sample per run (onnxq picks its own batch on a
dynamic batch axis, about 32 MiB of activations; the ranges do not depend on it). The repeats of the tools
take turns, so that load from other work on the machine hits both alike. Then, in this process:

* fidelity to the float model on held-out inputs (bench/datasets.py says which): top-1 agreement and
  SQNR (dB) of the model output (logits for the sample models, softmax for squeezenet and ppocr), and
  accuracy against labels where there are some;
* CPU latency, 2 intra-op threads, batch 1 (one held-out sample), of float / onnxq / ORT, measured
  interleaved in one loop by ``onnxq.measure.bench.bench_models`` (spinning off, as it does for interleaving).

ORT's per-channel QDQ needs opset 13 (DequantizeLinear's ``axis``). For squeezenet1.1 (opset 7) and
ppocr (opset 11) ORT is given the model upgraded with ``onnx.version_converter`` (the manual step a
user must take); it is also run once on the original opset, and whether ORT can load what it wrote is
recorded. onnxq gets the original model every time. Usage, from the repository root::

    python bench/quantize_vs_ort.py [--models a,b] [--methods minmax,entropy,percentile] [--repeats N]
                                    [--runs N] [--out bench/results/quantize_vs_ort.md]

``--repeats`` runs each quantization N times (wall time and RSS are reported as median and range).
Each run's key numbers are also appended to ``bench/results/quantize_vs_ort.runs.json``, and the
Markdown shows them for every stored run, so the spread between runs of the script stays visible.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402  (bench/datasets.py, beside this script; numpy only)
from quantize_children import first_line, opset_of, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ORT_OPSET = 13  # DequantizeLinear gained the per-channel ``axis`` attribute in opset 13
METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    sets: Any  # () -> (calib dict, eval dict)


def cases() -> list[Case]:
    out = [Case(p.stem, p, datasets.sample_model_sets) for p in sorted((ROOT / "sample_models").glob("*_digits.onnx"))]
    shared = [
        Case("squeezenet1.1", datasets.SQUEEZENET_DIR / "model.onnx", datasets.squeezenet_sets),
        Case("ppocr_mobile_v2_cls", datasets.PPOCR_DIR / "model.onnx", datasets.ppocr_sets),
    ]
    return out + [c for c in shared if c.path.exists()]


# --- fidelity and latency ----------------------------------------------------------------------


def fidelity(float_path: Path, q_path: Path, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Top-1 agreement and SQNR of the first output vs the float model, and accuracy where labelled."""
    import onnxruntime as ort

    from onnxq.measure.metrics import OutputFidelity, squeeze_trailing_ones

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3  # ORT's warnings about unused initializers would bury the table
    ref = ort.InferenceSession(str(float_path), so, providers=["CPUExecutionProvider"])
    qs = ort.InferenceSession(str(q_path), so, providers=["CPUExecutionProvider"])
    name = ref.get_inputs()[0].name
    fixed = ref.get_inputs()[0].shape[0]
    bs = fixed if isinstance(fixed, int) and fixed > 0 else 16
    fid = OutputFidelity("out")
    correct = 0
    x, labels = data[name], data.get("label")
    for start in range(0, len(x), bs):
        feed = {name: x[start : start + bs]}
        r, q = ref.run(None, feed)[0], qs.run(None, feed)[0]
        fid.update(q, r, len(feed[name]))
        if labels is not None:
            correct += int((squeeze_trailing_ones(q).argmax(-1) == labels[start : start + bs]).sum())
    res = fid.result()
    out = {"agreement": res["top1_agreement"], "sqnr_db": res["sqnr_db"], "samples": len(x)}
    out["accuracy"] = correct / len(x) if labels is not None else None
    return out


def float_accuracy(path: Path, data: dict[str, np.ndarray]) -> float | None:
    if "label" not in data:
        return None
    return fidelity(path, path, data)["accuracy"]


def latency(paths: list[Path], sample: dict[str, np.ndarray], runs: int) -> list[dict[str, float]]:
    """p50 (and p10/p90 of the run, CV) of each model, interleaved, 2 threads, batch 1."""
    from onnxq.measure.bench import BenchConfig, bench_models

    cfg = BenchConfig(threads=2, batches=(1,), runs=runs, warmup_runs=max(20, runs // 10), data=sample)
    entries = bench_models(paths, cfg)
    return [{"p50_ms": e["latency_ms"]["p50"], "cv": e["cv"]} for e in entries]


# --- one model ---------------------------------------------------------------------------------


def upgrade_for_ort(case: Case, work: Path) -> tuple[Path, int]:
    """The model ORT is given: the original, or a copy upgraded to opset 13 (the manual step)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(case.path))
    opset = opset_of(model)
    if opset >= ORT_OPSET:
        return case.path, opset
    upgraded = version_converter.convert_version(model, ORT_OPSET)
    # the converter keeps IR 3 (squeezenet), where every initializer must also be a graph input, which
    # onnx.checker then refuses; IR 7 is the one that goes with opset 13
    upgraded.ir_version = max(upgraded.ir_version, 7)
    path = work / f"{case.name}.opset{ORT_OPSET}.onnx"
    onnx.save(upgraded, str(path))
    return path, opset


def ort_loads(path: Path) -> str:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return "loads"
    except Exception as exc:
        text = first_line(exc)
        text = text.split(" failed:", 1)[1] if " failed:" in text else text
        # ORT names the node first and the reason last: keep both ends of a long message
        return "ORT refuses it: " + (text if len(text) <= 240 else f"{text[:110]} ... {text[-120:]}")


def run_case(case: Case, methods: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    calib, held_out = case.sets()
    calib_path = work / f"{case.name}.calib.npz"
    np.savez(calib_path, **calib)
    ort_input, opset = upgrade_for_ort(case, work)
    row: dict[str, Any] = {"model": case.name, "opset": opset, "calib_samples": len(next(iter(calib.values())))}
    row["eval_samples"] = len(next(iter(held_out.values())))
    row["float_accuracy"] = float_accuracy(case.path, held_out)
    if ort_input != case.path:
        row["ort_original_opset"] = _ort_on_original(case, calib_path, work)
        row["ort_pre_process"] = _ort_pre_process(case, work)
    row["methods"] = {}
    for method in methods:
        jobs = {
            tool: (src, work / f"{case.name}.{method}.{tool}.onnx", None)
            for tool, src in (("onnxq", case.path), ("ort", ort_input))
        }
        entry = _quantize_interleaved(jobs, calib_path, method, case, held_out, args)
        if method == methods[0] and entry["onnxq"].get("ok"):
            entry.update(_variants(case, method, calib_path, held_out, args, work))
        row["methods"][method] = entry
        print(_progress_line(case.name, method, entry), flush=True)
    row["latency"] = _latency_row(case, methods[0], row["methods"][methods[0]], held_out, args, work)
    return row


ISLANDS = "onnxq-islands"  # onnxq --avoid-float-boundaries: Conv/GlobalAveragePool next to a float op stay float
SYMMETRIC = "onnxq-int8-sym"  # onnxq with symmetric int8 activations (the TensorRT-style recipe) on ORT
VARIANTS = (ISLANDS, SYMMETRIC)


def _variants(
    case: Case,
    method: str,
    calib: Path,
    held_out: dict[str, np.ndarray],
    args: argparse.Namespace,
    work: Path,
) -> dict[str, dict[str, Any]]:
    """onnxq's variants of one method: --avoid-float-boundaries, and symmetric int8 activations."""
    jobs: dict[str, tuple[Path, Path, dict[str, Any]]] = {}
    islands = {"avoid_float_boundaries": True}
    jobs[ISLANDS] = (case.path, work / f"{case.name}.{method}.{ISLANDS}.onnx", islands)
    sym = {"activation_type": "int8", "symmetric_activations": True}
    jobs[SYMMETRIC] = (case.path, work / f"{case.name}.{method}.{SYMMETRIC}.onnx", sym)
    return _quantize_interleaved(jobs, calib, method, case, held_out, args)


def _quantize_interleaved(
    jobs: dict[str, tuple[Path, Path, dict[str, Any] | None]],
    calib: Path,
    method: str,
    case: Case,
    held_out: dict[str, np.ndarray],
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    """Run each job (label -> (source model, output, onnxq recipe options)) ``args.repeats`` times, the jobs
    taking turns (A B A B ...) so that load from other work on the machine hits them alike; then whether
    ORT loads each output, and its fidelity."""
    reps: dict[str, list[dict[str, Any]]] = {label: [] for label in jobs}
    for _ in range(args.repeats):
        for label, (src, out, options) in jobs.items():
            tool = "ort" if label == "ort" else "onnxq"
            reps[label].append(run_child(tool, src, calib, out, method, options))
    results = {}
    for label, (_, out, _) in jobs.items():
        res = _summarize(reps[label])
        if res["ok"]:
            res["loads"] = ort_loads(out)
            res["per_channel_dq"] = per_channel_dq_count(out)
            if res["loads"] == "loads":
                res["fidelity"] = fidelity(case.path, out, held_out)
        results[label] = res
    return results


def per_channel_dq_count(path: Path) -> int:
    """DequantizeLinear nodes with a per-channel (non-scalar) scale: the weights quantized per channel."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    for n in model.graph.node:  # ORT may keep scales in Constant nodes
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            sizes[n.output[0]] = int(numpy_helper.to_array(n.attribute[0].t).size)
    return sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear" and sizes.get(n.input[1], 1) > 1)


def _ort_on_original(case: Case, calib_path: Path, work: Path) -> dict[str, Any]:
    out = work / f"{case.name}.original-opset.ort.onnx"
    res = run_child("ort", case.path, calib_path, out, "minmax")
    if res.get("ok"):
        res["loads"] = ort_loads(out)
        res["per_channel_dq"] = per_channel_dq_count(out)
    return res


def _ort_pre_process(case: Case, work: Path) -> str:
    """Whether ORT's recommended quant_pre_process gets through the original model (it is not used)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(case.path), str(work / f"{case.name}.pre.onnx"))
        return "ok"
    except Exception as exc:
        return "fails: " + first_line(exc)


def _summarize(reps: list[dict[str, Any]]) -> dict[str, Any]:
    first = dict(reps[0])
    if not all(r.get("ok") for r in reps):
        return next(r for r in reps if not r.get("ok"))
    for key in ("wall_s", "quantize_s", "peak_rss_bytes"):
        values = [r[key] for r in reps]
        first[key] = statistics.median(values)
        first[key + "_range"] = (min(values), max(values))
    return first


def _latency_row(
    case: Case,
    method: str,
    entry: dict[str, Any],
    held_out: dict[str, np.ndarray],
    args: argparse.Namespace,
    work: Path,
) -> dict[str, Any] | None:
    """float / onnxq / ORT / onnxq's variants of ``method``, and the float model after onnxq's prepare
    alone (what the graph rewrites give without int8); every method writes the same graph (only the
    scales differ), so one method's models stand for all."""
    tools = [t for t in ("onnxq", "ort", *VARIANTS) if entry.get(t, {}).get("loads") == "loads"]
    if "ort" not in tools or "onnxq" not in tools:
        return None
    paths = [case.path] + [work / f"{case.name}.{method}.{t}.onnx" for t in tools]
    tools.append(PREPARED)
    paths.append(prepared_float(case, held_out, work))
    sample = {k: v[:1] for k, v in held_out.items() if k != "label"}
    reps = [latency(paths, sample, args.runs) for _ in range(args.latency_repeats)]
    row: dict[str, Any] = {"method": method, "runs": args.runs}
    for i, key in enumerate(["float", *tools]):
        row[key] = [r[i]["p50_ms"] for r in reps]
        row[key + "_cv"] = max(r[i]["cv"] for r in reps)
    return row


PREPARED = "float, onnxq prepare only"


def prepared_float(case: Case, held_out: dict[str, np.ndarray], work: Path) -> Path:
    """The float model after onnxq's prepare pass (opset, constants, BatchNorm and activation fusions),
    at the opset ``quantize`` would give it (13 at least, for per-channel DequantizeLinear)."""
    from onnxq.data import open_dataset
    from onnxq.model import load_model, save_model
    from onnxq.passes.prepare import PrepareConfig, prepare_model
    from onnxq.quantize.pipeline import QuantizeContext

    model = load_model(case.path)
    ctx = QuantizeContext(calib=open_dataset({k: v for k, v in held_out.items() if k != "label"}, model))
    config = PrepareConfig(target_opset=max(ORT_OPSET, opset_of(model)))
    path = work / f"{case.name}.prepared-float.onnx"
    save_model(prepare_model(model, config, ctx).model, path)
    return path


def _progress_line(model: str, method: str, entry: dict[str, Any]) -> str:
    parts = [f"{model:22s} {method:10s}"]
    for tool, res in entry.items():
        if not res.get("ok"):
            parts.append(f"{tool}: FAILED {res.get('error', '')[:80]}")
            continue
        fid = res.get("fidelity") or {}
        sqnr = fid.get("sqnr_db")
        parts.append(
            f"{tool}: {res['wall_s']:.2f} s {res['peak_rss_bytes'] / 2**20:.0f} MiB "
            f"SQNR {'-' if sqnr is None else f'{sqnr:.1f}'} dB"
        )
    return " | ".join(parts)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated model names (default: all found)")
    p.add_argument("--methods", default="minmax,entropy,percentile")
    p.add_argument("--repeats", type=int, default=3, help="quantizations per tool, model and method")
    p.add_argument("--runs", type=int, default=300, help="timed interleaved rounds per latency measurement")
    p.add_argument("--latency-repeats", type=int, default=3, help="latency measurements per model")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "quantize_vs_ort.md"))
    p.add_argument("--keep", help="keep the quantized models in this folder")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    chosen = cases()
    if args.models:
        wanted = args.models.split(",")
        chosen = [c for c in chosen if c.name in wanted]
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # ORT's warnings about unused initializers would bury the progress
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qvo_") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [run_case(c, methods, args, work) for c in chosen]
    run = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["bench/quantize_vs_ort.py", *argv]),
        "took_s": time.perf_counter() - t0,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "rows": rows,
    }
    import quantize_vs_ort_report as report  # the children never need it

    report.write(run, Path(args.out))
    print(f"wrote {args.out} in {run['took_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
