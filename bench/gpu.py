"""CUDA EP latency and fidelity of float32, FP16 and INT8 QDQ models, with and without IO binding.

For each model (the four sample models and ../shared/models/squeezenet1.1) this script makes
- ``fp16``: onnxq's prepare + fp16 passes;
- ``fp16 (ort)``: the anchor, ONNX Runtime's own converter (``onnxruntime.transformers.float16``, with
  ``keep_io_types=True``) applied to the original model, as a user of ORT would;
- ``int8 qdq``: onnxq's quantizer, W8A8 per channel, calibrated on the model's calibration data;
- ``float32 again (A/A)``: a byte-identical copy of the float model, whose "speedup" shows the
  measurement's own bias and noise (it should read 1.00x);
then measures the five on the CUDA EP with ``onnxq.measure.bench.bench_models`` (interleaved, so ratios survive a
noisy machine), with plain ``session.run`` and with IO binding, at each --batches size. squeezenet's graph
fixes batch 1; it has no Reshape, so a copy with a symbolic batch is measured at every size. Each
configuration is measured --repeats times: the table gives the median and the range of the speedups.

A second table gives what each variant costs in fidelity on the same EP, from ``onnxq.measure.evaluate`` with the
float model as reference (the 400 held-out test images for the sample models, with labels; squeezenet's
14 real photos, without). Run it on the lent GPU machine (see bench/README.md):

    python bench/gpu.py --out bench/results/gpu.md

On the CUDA EP, INT8 QDQ runs as DequantizeLinear + float kernels; the bench entries carry that warning
and the table keeps the number rather than hiding it.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from onnxq.measure.bench import BenchConfig, bench_models
from onnxq.measure.evaluate import evaluate
from onnxq.model import load_model, lower_ir_version_for_ort, save_model
from onnxq.passes.fp16 import convert_to_fp16
from onnxq.passes.prepare import prepare_model
from onnxq.quantize.driver import quantize
from onnxq.report.environment import collect_environment, describe_environment

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"
AGAIN = "float32 again (A/A)"


def models(shared: Path) -> list[tuple[str, Path, Path, Path]]:
    """(name, model, calibration data, evaluation data)."""
    sample = ROOT / "sample_models"
    out = [(p.stem, p, sample / "calib.npz", sample / "test.npz") for p in sorted(sample.glob("*.onnx"))]
    sq = shared / "squeezenet1.1"
    if sq.exists():
        inputs = sq / "real_inputs" / "inputs.npy"
        out.append(("squeezenet1.1", sq / "model.onnx", inputs, inputs))
    return out


def with_symbolic_batch(path: Path, out: Path) -> Path:
    """A copy of ``path`` whose graph inputs and outputs have a symbolic first dimension ``N``.

    Weights listed as graph inputs (IR 3) become plain initializers, so no tool treats them as inputs. Only
    for graphs with no op that can bake the batch into a shape (Reshape, Expand, ...); the copy's
    intermediate shapes are dropped so that ORT infers them again.
    """
    model = load_model(path)
    baked = {"Reshape", "Expand", "Tile", "ConstantOfShape", "Flatten"} & {n.op_type for n in model.graph.node}
    if baked:
        raise SystemExit(f"{path}: cannot make the batch symbolic, the graph has {sorted(baked)}")
    initializers = {t.name for t in model.graph.initializer}
    data_inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    del model.graph.input[:]  # IR 3 lists the weights as inputs too; IR 4 lets them be constants
    model.graph.input.extend(data_inputs)
    model.ir_version = max(model.ir_version, 4)
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.type.tensor_type.shape.dim:
            vi.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    save_model(model, out)
    return out


def make_variants(name: str, path: Path, calib: Path, work: Path) -> dict[str, Path]:
    """{precision: model path}, the float32 entry first."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    ours = convert_to_fp16(prepare_model(load_model(path)).model).model
    lower_ir_version_for_ort(ours)
    save_model(ours, work / f"{name}.fp16.onnx")
    anchor = convert_float_to_float16(onnx.load(path), keep_io_types=True)
    # ORT's converter appends its input Casts after their readers; put the nodes in the order ONNX requires
    anchor = gs.export_onnx(gs.import_onnx(anchor).toposort())
    lower_ir_version_for_ort(anchor)
    save_model(anchor, work / f"{name}.fp16-ort.onnx")
    quantize(path, work / f"{name}.int8.onnx", calib)
    again = work / f"{name}.again.onnx"
    shutil.copyfile(path, again)
    return {
        "float32": path,
        "fp16": work / f"{name}.fp16.onnx",
        "fp16 (ort)": work / f"{name}.fp16-ort.onnx",
        "int8 qdq": work / f"{name}.int8.onnx",
        AGAIN: again,
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def fidelity_row(
    name: str, precision: str, variant: Path, reference: Path, ref_acc: float | None, data: Path, ep: str
) -> str:
    """One Markdown row: ``variant`` evaluated on ``ep`` against the float ``reference`` (top-1 ``ref_acc``)."""
    result = evaluate(variant, data, reference=reference, ep=ep, allow_fallback=True)
    out = result["fidelity"]["outputs"][0]
    sqnr = "exact" if out["sqnr_db"] is None else f"{out['sqnr_db']:.1f}"
    return (
        f"| {name} | {precision} | {result['samples']} | {_pct(result['accuracy']['top1'])} | {_pct(ref_acc)} "
        f"| {_pct(out['top1_agreement'])} | {sqnr} | {out['max_abs_error']:.3g} |"
    )


def _nodes(ep_nodes: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('ExecutionProvider', '')} {v}" for k, v in ep_nodes.items())


def latency_rows(
    name: str, variants: dict[str, Path], batch: int, io_binding: bool, args: argparse.Namespace, notes: set
) -> list[str]:
    """Markdown rows for one (model, batch, IO binding) configuration, measured args.repeats times."""
    cfg = BenchConfig(
        eps=(args.ep,),
        batches=(batch,),
        runs=args.runs,
        warmup_runs=args.warmup,
        io_binding=io_binding,
        allow_fallback=True,  # the int8 model's bias DequantizeLinear nodes run on the host; entries say so
    )
    runs = [bench_models(list(variants.values()), cfg) for _ in range(args.repeats)]
    rows = []
    for i, precision in enumerate(variants):
        entries = [r[i] for r in runs]
        p50 = statistics.median(e["latency_ms"]["p50"] for e in entries)
        p99 = statistics.median(e["latency_ms"]["p99"] for e in entries)
        thr = statistics.median(e["throughput_per_s"] for e in entries)
        speed = [e["speedup_vs_first"] or 1.0 for e in entries]
        mem = entries[-1]["gpu_mem_bytes"]
        notes.update(f"{name}: {w}" for e in entries for w in e["warnings"] if "constant-input" in w)
        notes.update(w for e in entries for w in e["warnings"] if "QDQ" in w)
        rows.append(
            f"| {name} | {precision} | {batch} | {'yes' if io_binding else 'no'} | {p50:.3f} | {p99:.3f} "
            f"| {thr:,.0f} | {statistics.median(speed):.2f}x | {min(speed):.2f}-{max(speed):.2f} "
            f"| {'n/a' if mem is None else f'{mem / 2**20:.0f}'} | {_nodes(entries[-1]['ep_nodes'])} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.md")
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--ep", default="cuda", help="cuda (the point of this script); cpu for a dry run")
    parser.add_argument("--models-dir", type=Path, default=SHARED, help="holds squeezenet1.1/ (../shared/models)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[str] = []
    fidelity_rows: list[str] = []
    notes: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, path, calib, data in models(args.models_dir):
            if name == "squeezenet1.1":
                path = with_symbolic_batch(path, work / "squeezenet1.1.onnx")
            variants = make_variants(name, path, calib, work)
            ref_acc = evaluate(path, data, ep=args.ep)["accuracy"]["top1"]  # the float model's, once per model
            for precision, variant in list(variants.items())[1:-1]:
                fidelity_rows.append(fidelity_row(name, precision, variant, path, ref_acc, data, args.ep))
            for batch in batches:
                for io_binding in (False, True):
                    rows += latency_rows(name, variants, batch, io_binding, args, notes)
            write(args, rows, notes, fidelity_rows)  # after each model, so a cut-off run keeps what it measured
            print(f"{name}: done", file=sys.stderr, flush=True)
    print(args.out.read_text())
    return 0


def write(args: argparse.Namespace, rows: list[str], notes: set[str], fidelity_rows: list[str]) -> None:
    env = collect_environment()
    lines = [
        f"# {args.ep.upper()} EP: float32, FP16 (onnxq and ORT's converter) and INT8 QDQ",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}`",
        "",
        "Machine and versions:",
        "",
        "```",
        describe_environment(env),
        "```",
        "",
        f"## Latency ({args.runs} timed rounds after {args.warmup} warm-up runs, interleaved; "
        f"median of {args.repeats} repeats)",
        "",
        "| model | precision | batch | IO binding | p50 ms | p99 ms | throughput /s | speedup vs float32 "
        "| speedup range | GPU mem MiB | nodes per EP |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
        "",
        *[f"- {n}" for n in sorted(notes)],
        "",
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


if __name__ == "__main__":
    from onnxq.errors import OnnxqError

    try:
        sys.exit(main())
    except OnnxqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
