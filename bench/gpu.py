"""CUDA EP latency of float, FP16 and INT8 QDQ models, with and without IO binding.

For each model (the four sample models and ../shared/models/squeezenet1.1), this script makes the FP16
version with onnxq's fp16 pass and the INT8 QDQ version with onnxq's quantizer, then measures the three on
the CUDA EP with ``onnxq.bench.bench_models`` (interleaved, so ratios survive a noisy machine), once with
plain ``session.run`` and once with IO binding, at batch 1 and batch 32 (squeezenet's graph fixes batch 1).
Speedups are against the float model of the same group. A second table gives what each variant costs in
fidelity on the CUDA EP, from ``onnxq.evaluate`` with the float model as reference (held-out test images for
the sample models, with labels; squeezenet's real photos). The Markdown goes to --out.

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
from onnxq.evaluate import evaluate
from onnxq.model import load_model, lower_ir_version_for_ort, save_model
from onnxq.passes.fp16 import convert_to_fp16
from onnxq.passes.prepare import prepare_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"


def models(shared: Path) -> list[tuple[Path, Path, Path, int | None]]:
    """(model, calibration data, evaluation data, largest batch the graph allows or None for any)."""
    sample = ROOT / "sample_models"
    out = [(p, sample / "calib.npz", sample / "test.npz", None) for p in sorted(sample.glob("*.onnx"))]
    sq = shared / "squeezenet1.1"
    if sq.exists():
        inputs = sq / "real_inputs" / "inputs.npy"
        out.append((sq / "model.onnx", inputs, inputs, 1))
    return out


def make_variants(path: Path, calib: Path, work: Path) -> list[Path]:
    fp16 = work / f"{path.parent.name if path.stem == 'model' else path.stem}.fp16.onnx"
    result = convert_to_fp16(prepare_model(load_model(path)).model)
    lower_ir_version_for_ort(result.model)
    save_model(result.model, fp16)
    int8 = fp16.with_name(fp16.name.replace(".fp16.", ".int8."))
    quantize(path, int8, calib)
    return [path, fp16, int8]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def fidelity_row(variant: Path, reference: Path, data: Path, ep: str) -> str:
    """One Markdown row: ``variant`` evaluated on ``ep`` against the float ``reference``, also on ``ep``."""
    result = evaluate(variant, data, reference=reference, ep=ep)
    ref_acc = evaluate(reference, data, ep=ep)["accuracy"]["top1"]
    out = result["fidelity"]["outputs"][0]
    precision = "fp16" if ".fp16" in variant.name else "int8 qdq"
    sqnr = "exact" if out["sqnr_db"] is None else f"{out['sqnr_db']:.1f}"
    return (
        f"| {variant.name.rsplit('.', 2)[0]} | {precision} | {result['samples']} | {_pct(result['accuracy']['top1'])} "
        f"| {_pct(ref_acc)} | {_pct(out['top1_agreement'])} | {sqnr} | {out['max_abs_error']:.3g} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.md")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--ep", default="cuda", help="cuda (the point of this script); cpu for a dry run")
    parser.add_argument("--models-dir", type=Path, default=SHARED, help="holds squeezenet1.1/ (../shared/models)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    fidelity_rows = []
    notes = set()
    with tempfile.TemporaryDirectory() as tmp:
        for path, calib, data, max_batch in models(args.models_dir):
            variants = make_variants(path, calib, Path(tmp))
            for variant in variants[1:]:
                fidelity_rows.append(fidelity_row(variant, variants[0], data, args.ep))
            for batch in batches:
                if max_batch is not None and batch > max_batch:
                    continue
                for io_binding in (False, True):
                    cfg = BenchConfig(
                        eps=(args.ep,),
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
                                e["gpu_mem_bytes"],
                                ", ".join(
                                    f"{k.replace('ExecutionProvider', '')} {v}"
                                    for k, v in e["ep_nodes"].items()
                                ),
                            )
                        )
                        notes.update(w for w in e["warnings"] if "QDQ" in w)
    env = collect_environment()
    lines = [
        f"# {args.ep.upper()} EP latency: float32, FP16 and INT8 QDQ",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}`",
        "",
        "Machine and versions:",
        "",
        "```",
        describe_environment(env),
        "```",
        "",
        "## Latency",
        "",
        "| model | precision | batch | IO binding | p50 ms | p99 ms | throughput /s | speedup vs float "
        "| GPU mem MiB | nodes per EP |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        mem = "n/a" if r[8] is None else f"{r[8] / 2**20:.0f}"
        lines.append(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:,.0f} | {r[7]:.2f}x "
            f"| {mem} | {r[9]} |"
        )
    lines += ["", *[f"- {n}" for n in sorted(notes)], ""]
    lines += [
        f"## Fidelity on the {args.ep.upper()} EP, against the float32 model on the same EP",
        "",
        "| model | precision | samples | top-1 | float top-1 | top-1 agreement | SQNR dB | max abs err |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *fidelity_rows,
        "",
    ]
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
