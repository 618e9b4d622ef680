"""Output formats side by side: onnxq QDQ, onnxq QOperator, ORT's QOperator and QDQ, and ``onnxq convert``.

For each model (the sample models, squeezenet1.1, ppocr_mobile_v2_cls), every quantization runs in a child
process of its own (bench/quantize_children.py) on the same calibration samples:

* ``onnxq-qdq``: ``onnxq quantize`` (default recipe); ``onnxq-qoperator``: the same with ``--format qoperator``;
* ``ort-qoperator`` / ``ort-qdq``: ``quantize_static(QuantFormat.QOperator / QDQ, per_channel=True, U8S8)``,
  given the model upgraded to opset 13 where it is older (ORT's manual step);
* ``ort-qdq+convert``: ``onnxq convert`` of ORT's QDQ output (a child process too), checked by onnxq against it
  on the held-out inputs.

Then, in this process: fidelity to the float model on held-out inputs (top-1 agreement, SQNR of the output),
whether the onnxq QOperator outputs are bit-identical to onnxq's QDQ outputs, size, and CPU latency (2 threads,
batch 1) of float and all five, interleaved in one loop by ``onnxq.measure.bench.bench_models``, repeated to
show the spread. Ratios are per repetition (each against the float model or ORT's QOperator model of that same
repetition), then the median and range. Usage, from the repository root::

    python bench/formats.py [--models a,b] [--runs N] [--repeats N] [--out bench/results/formats.md]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantize_children import run_child  # noqa: E402
from quantize_vs_ort import cases, fidelity, latency, upgrade_for_ort  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("onnxq-qdq", "onnxq-qoperator", "ort-qoperator", "ort-qdq", "ort-qdq+convert")


def quantize_all(case: Any, calib: Path, eval_path: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Each variant's model, made in its own process; its wall time and result."""
    ort_input, _ = upgrade_for_ort(case, work)
    out = {v: {"path": work / f"{case.name}.{v}.onnx"} for v in VARIANTS}
    qop = {"format": "qoperator"}
    jobs = [("onnxq-qdq", "onnxq", case.path, {}), ("onnxq-qoperator", "onnxq", case.path, qop),
            ("ort-qoperator", "ort", ort_input, qop), ("ort-qdq", "ort", ort_input, {})]  # fmt: skip
    for label, tool, src, options in jobs:
        res = run_child(tool, src, calib, out[label]["path"], "minmax", options)
        out[label].update(ok=res["ok"], wall_s=res["wall_s"], error=res.get("error"))
    cmd = [sys.executable, "-m", "onnxq", "convert", str(out["ort-qdq"]["path"]), "-o",
           str(out["ort-qdq+convert"]["path"]), "--data", str(eval_path), "--json"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    entry = out["ort-qdq+convert"]
    entry.update(ok=proc.returncode == 0, wall_s=time.perf_counter() - t0)
    if proc.returncode == 0:
        summary = json.loads(proc.stdout)
        check = summary["check"]
        inputs = check["inputs"].replace(str(eval_path), eval_path.name)
        entry["check"] = {"bit_exact": check["bit_exact"], "inputs": inputs, "outputs": check["outputs"]}
        entry["converted"] = summary["nodes_converted"]
    else:
        entry["error"] = (proc.stderr.strip().splitlines() or ["no output"])[0]
    return out


def op_census(path: Path) -> dict[str, int]:
    """QOperator nodes, and the Q/DQ nodes left, in the model at ``path``."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    integer = sum(1 for op in ops if op.startswith("QLinear") or op in ("QGemm", "MatMulIntegerToFloat",
                                                                          "MatMulInteger", "ConvInteger"))  # fmt: skip
    qdq = sum(1 for op in ops if op in ("QuantizeLinear", "DequantizeLinear"))
    return {"integer_ops": integer, "qdq_nodes": qdq}


def same_outputs(a: Path, b: Path, data: dict[str, np.ndarray]) -> bool:
    """Whether two models give identical outputs on ``data`` (batch 1, ORT's default optimisation)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sa, sb = (ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in (a, b))
    name = sa.get_inputs()[0].name
    return all(np.array_equal(sa.run(None, {name: x[None]})[0], sb.run(None, {name: x[None]})[0]) for x in data[name])


def latency_rounds(paths: list[Path], sample: dict[str, np.ndarray], runs: int, repeats: int) -> list[list[float]]:
    """p50 (ms) of each model per repetition: all models interleaved within each repetition."""
    return [[e["p50_ms"] for e in latency(paths, sample, runs)] for _ in range(repeats)]


def run_case(case: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    calib, held_out = case.sets()
    calib_path, eval_path = work / f"{case.name}.calib.npz", work / f"{case.name}.eval.npz"
    np.savez(calib_path, **calib)
    np.savez(eval_path, **{k: v for k, v in held_out.items() if k != "label"})
    models = quantize_all(case, calib_path, eval_path, work)
    ok = [v for v in VARIANTS if models[v]["ok"]]
    for v in ok:
        m = models[v]
        m.update(size=m["path"].stat().st_size, **op_census(m["path"]))
        m["fidelity"] = fidelity(case.path, m["path"], held_out)
    row = {"model": case.name, "float_size": case.path.stat().st_size, "models": models}
    if {"onnxq-qdq", "onnxq-qoperator"} <= set(ok):
        row["qoperator_bit_identical"] = same_outputs(models["onnxq-qdq"]["path"], models["onnxq-qoperator"]["path"],
                                                      held_out)  # fmt: skip
    name = next(k for k in held_out if k != "label")
    sample = {name: held_out[name][:1]}
    rounds = latency_rounds([case.path, *(models[v]["path"] for v in ok)], sample, args.runs, args.repeats)
    row["latency"] = {"labels": ["float", *ok], "rounds": rounds}
    for v in ok:
        m = models[v]
        m.pop("path")
    print(f"{case.name}: done", flush=True)
    return row


def _median_range(values: list[float], fmt: str = ".2f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def render(run: dict[str, Any]) -> str:
    from onnxq.report.environment import collect_environment, describe_environment

    env = collect_environment()
    lines = ["# Output formats: onnxq QDQ and QOperator against ORT's QOperator and QDQ", "",
             f"- machine: {describe_environment(env)}; {(env.get('memory_total_bytes') or 0) / 2**30:.0f} GiB RAM",
             f"- command: `{run['command']}` ({run['took_s']:.0f} s, started {run['started']} UTC)",
             "- latency: p50 ms, 2 threads, batch 1, all six models interleaved in each repetition; "
             "ratios per repetition, median (range)", "- fidelity: against the float model on the held-out inputs "
             "of bench/datasets.py; SQNR of the model's output", ""]  # fmt: skip
    columns = ("model", "variant", "integer ops", "Q/DQ left", "size KiB", "agreement", "SQNR dB", "p50 ms",
               "vs float", "vs ort-qoperator")  # fmt: skip
    lines += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in run["rows"]:
        lines += _rows(row)
    lines.append("")
    for row in run["rows"]:
        c = row["models"]["ort-qdq+convert"]
        bit = row.get("qoperator_bit_identical")
        check = c.get("check")
        verdict = ("bit-exact" if check["bit_exact"] else "within tolerance") if check else f"failed: {c.get('error')}"
        lines.append(f"- {row['model']}: onnxq-qoperator outputs bit-identical to onnxq-qdq: {'yes' if bit else 'no'}; "
                     f"`onnxq convert` of ORT's QDQ output, checked against it on {check['inputs'] if check else '-'}: "
                     f"{verdict} ({c.get('wall_s', 0):.1f} s)")  # fmt: skip
    return "\n".join(lines) + "\n"


def _rows(row: dict[str, Any]) -> list[str]:
    labels, rounds = row["latency"]["labels"], row["latency"]["rounds"]
    col = {label: [r[i] for r in rounds] for i, label in enumerate(labels)}
    size, p50 = row["float_size"] / 1024, _median_range(col["float"], ".3f")
    out = [f"| {row['model']} | float | - | - | {size:.0f} | - | - | {p50} | 1 | - |"]
    for v in labels[1:]:
        m = row["models"][v]
        f = m["fidelity"]
        vs_float = [a / b for a, b in zip(col["float"], col[v], strict=True)]
        vs_ort = [a / b for a, b in zip(col["ort-qoperator"], col[v], strict=True)] if "ort-qoperator" in col else None
        out.append(f"| {row['model']} | {v} | {m['integer_ops']} | {m['qdq_nodes']} | {m['size'] / 1024:.0f} | "
                   f"{f['agreement']:.1%} | {f['sqnr_db']:.2f} | {_median_range(col[v], '.3f')} | "
                   f"{_median_range(vs_float)}x | {_median_range(vs_ort) + 'x' if vs_ort else '-'} |")  # fmt: skip
    for v in VARIANTS:
        if not row["models"][v]["ok"]:
            out.append(f"| {row['model']} | {v} | failed: {row['models'][v].get('error')} |||||||| ")
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated model names (default: all found)")
    p.add_argument("--runs", type=int, default=300, help="timed interleaved rounds per latency measurement")
    p.add_argument("--repeats", type=int, default=3, help="latency measurements per model")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "formats.md"))
    args = p.parse_args(argv)
    chosen = [c for c in cases() if not args.models or c.name in args.models.split(",")]
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="formats_") as tmp:
        rows = [run_case(c, args, Path(tmp)) for c in chosen]
    run = {"command": "python " + " ".join(shlex.quote(a) for a in ["bench/formats.py", *argv]), "rows": rows,
           "took_s": time.perf_counter() - t0, "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}  # fmt: skip
    Path(args.out).write_text(render(run))
    Path(args.out).with_suffix(".json").write_text(json.dumps(run, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
