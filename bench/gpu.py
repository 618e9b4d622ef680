"""CUDA EP latency of float, FP16 and INT8 QDQ models, with and without IO binding.

For each model (the four sample models and ../shared/models/squeezenet1.1), this script makes the FP16
version with onnxq's fp16 pass and the INT8 QDQ version with onnxq's quantizer, then measures the three on
the CUDA EP with ``onnxq.bench.bench_models`` (interleaved, so ratios survive a noisy machine), once with
plain ``session.run`` and once with IO binding, at batch 1 and batch 32 (squeezenet's graph fixes batch 1).
Speedups are against the float model of the same group. The Markdown table goes to --out.

It needs onnxruntime-gpu and a CUDA device: run it on the lent GPU machine (see ../shared/tools/gpu-wheels):

    python bench/gpu.py --out bench/results/gpu.md

On the CUDA EP, INT8 QDQ runs as DequantizeLinear + float kernels; the bench entries carry that warning
and the table keeps the number rather than hiding it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from onnxq.api import quantize
from onnxq.bench import BenchConfig, bench_models
from onnxq.environment import collect_environment, describe_environment
from onnxq.model import load_model, lower_ir_version_for_ort, save_model
from onnxq.passes.fp16 import convert_to_fp16
from onnxq.passes.prepare import prepare_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"


def models() -> list[tuple[Path, Path, int | None]]:
    """(model, calibration data, largest batch the graph allows or None for any)."""
    out = [
        (p, ROOT / "sample_models" / "calib.npz", None)
        for p in sorted((ROOT / "sample_models").glob("*.onnx"))
    ]
    sq = SHARED / "squeezenet1.1"
    if sq.exists():
        out.append((sq / "model.onnx", sq / "real_inputs" / "inputs.npy", 1))
    return out


def make_variants(path: Path, calib: Path, work: Path) -> list[Path]:
    fp16 = work / f"{path.parent.name if path.stem == 'model' else path.stem}.fp16.onnx"
    result = convert_to_fp16(prepare_model(load_model(path)).model)
    lower_ir_version_for_ort(result.model)
    save_model(result.model, fp16)
    int8 = fp16.with_name(fp16.name.replace(".fp16.", ".int8."))
    quantize(path, int8, calib)
    return [path, fp16, int8]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.md")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    notes = set()
    with tempfile.TemporaryDirectory() as tmp:
        for path, calib, max_batch in models():
            variants = make_variants(path, calib, Path(tmp))
            for batch in batches:
                if max_batch is not None and batch > max_batch:
                    continue
                for io_binding in (False, True):
                    cfg = BenchConfig(
                        eps=("cuda",),
                        batches=(batch,),
                        runs=args.runs,
                        warmup_runs=args.warmup,
                        io_binding=io_binding,
                    )
                    for e in bench_models(variants, cfg):
                        rows.append(
                            (
                                e["model"],
                                "fp16"
                                if ".fp16" in e["model_path"]
                                else "int8 qdq"
                                if ".int8" in e["model_path"]
                                else "float32",
                                batch,
                                "yes" if io_binding else "no",
                                e["latency_ms"]["p50"],
                                e["latency_ms"]["p99"],
                                e["throughput_per_s"],
                                e["speedup_vs_first"] or 1.0,
                                ", ".join(
                                    f"{k.replace('ExecutionProvider', '')} {v}"
                                    for k, v in e["ep_nodes"].items()
                                ),
                            )
                        )
                        notes.update(w for w in e["warnings"] if "QDQ" in w)
    env = collect_environment()
    lines = [
        "# CUDA EP latency: float32, FP16 and INT8 QDQ",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}`",
        "",
        "Machine and versions:",
        "",
        "```",
        describe_environment(env),
        "```",
        "",
        "| model | precision | batch | IO binding | p50 ms | p99 ms | throughput /s | speedup vs float "
        "| nodes per EP |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:,.0f} | {r[7]:.2f}x | {r[8]} |"
        )
    lines += ["", *[f"- {n}" for n in sorted(notes)], ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".md.tmp")
    tmp_out.write_text("\n".join(lines))
    tmp_out.replace(args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    from onnxq.errors import OnnxqError

    try:
        sys.exit(main())
    except OnnxqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
