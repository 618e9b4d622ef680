"""CUDA EP latency of float32, FP16 (onnxq's and ORT's converter) with and without NHWC and CUDA graphs, and
INT8 QDQ for the cuda target, at batch 1 to 256, with fidelity read back from the measured runs themselves.

Models: squeezenet1.1 from ../shared/models, whose graph fixes batch 1 (``onnxq.rebatch`` makes the checked
symbolic-batch copy that every variant is made from), ppocr_mobile_v2_cls (``ppocr``, real text lines), and
``bench/resnet50.py``'s ResNet-50 with random weights (latency only: its outputs mean nothing). Variants, each
on the CUDA EP with IO binding; all of a model's variants are measured interleaved in one group per batch
(``bench_models`` with per-model options):

| variant | model | CUDA EP options |
| --- | --- | --- |
| float32 (ORT's default session) | the float model | prefer_nhwc 0, enable_cuda_graph 0 (ORT: NCHW, TF32 on) |
| fp16 (ORT converter) | onnxruntime.transformers.float16, keep_io_types | 0, 0 |
| fp16 (onnxq) | onnxq prepare + fp16 | 0, 0 |
| fp16 + NHWC | the same file | 1, 0 |
| fp16 + CUDA graph | the same file | 0, 1 |
| fp16, onnxq's choice | the same file | left open: `onnxq bench --ep cuda --io-binding` picks them |
| int8 QDQ (target cuda), onnxq's choice | onnxq quantize --target cuda | left open |

Every group runs with --allow-fallback semantics: a node that leaves CUDA is measured where it ran and shown
in the nodes-per-EP column, not hidden. Fidelity: each variant's outputs, read back after its timed runs,
against the float32 session's on the same input batch (squeezenet: 98 held-out photo crops, tiled to the
batch; the table uses the batch-128 runs, where each crop appears once).

    python bench/gpu.py --models squeezenet1.1,resnet50 --json-out gpu.json   # measure (on the GPU machine)
    python bench/gpu.py --render gpu.json [more.json] --out bench/results/gpu_h200.md
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxq.measure.bench import BenchConfig, bench_models
from onnxq.measure.metrics import OutputFidelity
from onnxq.model import load_model, lower_ir_version_for_ort, save_model
from onnxq.passes.fp16 import convert_to_fp16
from onnxq.passes.prepare import prepare_model
from onnxq.quantize.driver import quantize
from onnxq.quantize.recipe import QuantizeRecipe
from onnxq.rebatch import rebatch
from onnxq.report.environment import collect_environment, describe_environment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
OFF = {"cuda_nhwc": False, "cuda_graph": False, "cuda_fuse_conv_bias": False}
# (label, which file, its own CUDA options; {} leaves them to onnxq)
VARIANTS = (
    ("float32 (ORT default session)", "float32", OFF),
    ("fp16 (ORT converter)", "fp16-ort", OFF),
    ("fp16 (onnxq)", "fp16", OFF),
    ("fp16 + NHWC", "fp16", {"cuda_nhwc": True, "cuda_graph": False, "cuda_fuse_conv_bias": False}),
    ("fp16 + CUDA graph", "fp16", {"cuda_nhwc": False, "cuda_graph": True, "cuda_fuse_conv_bias": False}),
    ("fp16, onnxq's choice", "fp16", {}),
    ("int8 QDQ (target cuda), onnxq's choice", "int8", {}),
)


def squeezenet(work: Path) -> tuple[Path, Path, Path]:
    """(float model with a symbolic batch, calibration .npz, evaluation .npz tiled to 256)."""
    import datasets

    calib, held_out = datasets.squeezenet_sets()
    done = rebatch(load_model(datasets.SQUEEZENET_DIR / "model.onnx"))
    print(done.note(), file=sys.stderr)
    path = save_model(done.model, work / "squeezenet1.1.onnx")
    np.savez(work / "calib.npz", **calib)
    x = held_out["data_0"]
    np.savez(work / "eval.npz", data_0=np.concatenate([x] * (256 // len(x) + 1))[:256])
    return path, work / "calib.npz", work / "eval.npz"


def resnet50(work: Path) -> tuple[Path, Path, None]:
    """(the random-weight ResNet-50, random calibration inputs, None: random bench inputs)."""
    import resnet50 as builder

    path = work / "resnet50.onnx"
    onnx.save(builder.build(), path)
    x = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
    np.savez(work / "r50_calib.npz", input=x)
    return path, work / "r50_calib.npz", None


PPOCR_UNIQUE = 64  # distinct held-out text lines (and their 180-degree turns and crops) in the evaluation set


def ppocr(work: Path) -> tuple[Path, Path, Path]:
    """(ppocr_mobile_v2_cls from ../shared/models, 64 calibration lines, 64 held-out lines tiled to 256). Its graph
    declares the batch as a literal -1 and height and width open: the data gives them (48 x 192)."""
    import datasets

    calib, held_out = datasets.ppocr_sets(n_calib=64, n_eval=PPOCR_UNIQUE)
    np.savez(work / "ppocr_calib.npz", **calib)
    x = held_out["x"]
    np.savez(work / "ppocr_eval.npz", x=np.concatenate([x] * (256 // len(x) + 1))[:256])
    return datasets.PPOCR_DIR / "model.onnx", work / "ppocr_calib.npz", work / "ppocr_eval.npz"


MINILM_DIR = ROOT.parent / "shared" / "models" / "paraphrase_minilm_l3"
MINILM_FILE = Path.home() / ".cache" / "onnxq-models" / "paraphrase_minilm_l3" / "model.onnx"


def minilm(work: Path) -> tuple[Path, Path, Path]:
    """(the paraphrase MiniLM as fetched by ../shared/tools/get-paraphrase-minilm, 64 sentences to calibrate,
    the 286 real sentences padded to 52 tokens and tiled to 256 rows)."""
    if not MINILM_FILE.is_file():
        raise SystemExit(f"{MINILM_FILE} is missing: run ../shared/tools/get-paraphrase-minilm (or carry it)")
    data = dict(np.load(MINILM_DIR / "sentences_padded.npz"))
    np.savez(work / "minilm_calib.npz", **{k: v[-64:] for k, v in data.items()})
    np.savez(work / "minilm_eval.npz", **{k: v[:256] for k, v in data.items()})
    return MINILM_FILE, work / "minilm_calib.npz", work / "minilm_eval.npz"


MODELS = {"squeezenet1.1": squeezenet, "ppocr": ppocr, "resnet50": resnet50, "minilm": minilm}
# the output compared for fidelity (index into the graph's outputs), and whether top-1 agreement means anything
FIDELITY_OUTPUT = {"minilm": (3, False)}  # 461: the mean-pooled sentence embedding
CONV_ONLY = ("fp16 + NHWC",)  # variants that measure nothing new on a model without Conv


def make_files(name: str, path: Path, calib: Path, work: Path) -> dict[str, Path]:
    """{file kind: path} of the float model and what is made from it."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    ours = convert_to_fp16(prepare_model(load_model(path)).model).model
    lower_ir_version_for_ort(ours)
    anchor = convert_float_to_float16(onnx.load(path), keep_io_types=True)
    anchor = gs.export_onnx(gs.import_onnx(anchor).toposort())  # ORT's converter leaves its Casts out of order
    lower_ir_version_for_ort(anchor)
    quantize(path, work / f"{name}.int8.onnx", calib, QuantizeRecipe(target="cuda"), progress=False)
    return {
        "float32": path,
        "fp16-ort": save_model(anchor, work / f"{name}.fp16-ort.onnx"),
        "fp16": save_model(ours, work / f"{name}.fp16.onnx"),
        "int8": work / f"{name}.int8.onnx",
    }


def measure(name: str, files: dict[str, Path], data: Path | None, args: argparse.Namespace, result: dict) -> None:
    """Latency rows per (variant, batch) over args.repeats interleaved runs, and fidelity rows, added to
    ``result`` and written out after each batch. A group that fails is measured again without the variants
    that ask for a CUDA graph, and the error is kept in the results."""
    for batch in args.batches:
        variants = [v for v in VARIANTS if name != "minilm" or v[0] not in CONV_ONLY]
        try:
            _measure_batch(name, files, data, batch, variants, args, result)
        except Exception as exc:  # noqa: BLE001 - one shot on a lent GPU: keep what can be measured, say what failed
            result["errors"].append(f"{name} batch {batch}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            variants = [v for v in variants if not v[2].get("cuda_graph")]
            _measure_batch(name, files, data, batch, variants, args, result)
        _write(args, result)
        print(f"{name} batch {batch}: done", file=sys.stderr, flush=True)


def _measure_batch(name: str, files: dict[str, Path], data: Path | None, batch: int, variants: list,
                   args: argparse.Namespace, result: dict) -> None:  # fmt: skip
    cfg = BenchConfig(eps=(args.ep,), batches=(batch,), duration_s=args.duration, warmup_runs=args.warmup,
                      io_binding=True, data=str(data) if data else None, allow_fallback=True)  # fmt: skip
    options = [o for _, _, o in variants] if args.ep == "cuda" else None  # --ep cpu: a dry run of the code
    outputs: dict[int, list] = {}

    def keep(ep, b, i, outs):
        outputs.setdefault(i, outs)  # the first repeat's

    runs = [bench_models([files[f] for _, f, _ in variants], cfg, on_outputs=keep, model_options=options)
            for _ in range(args.repeats)]  # fmt: skip
    labels = [label for label, _, _ in variants]
    result["latency"] += [_latency_row(name, label, batch, [r[i] for r in runs]) for i, label in enumerate(labels)]
    if data is not None and batch == args.fidelity_batch:
        # 256 distinct sentences; 64 distinct text lines; 98 distinct crops
        unique = {"minilm": 256, "ppocr": PPOCR_UNIQUE}.get(name, args.unique_samples)
        result["fidelity"] += _fidelity_rows(name, labels, outputs, min(batch, unique))


def _write(args: argparse.Namespace, result: dict) -> None:
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))


def _latency_row(name: str, label: str, batch: int, entries: list[dict]) -> dict:
    last = entries[-1]
    return {
        "model": name,
        "variant": label,
        "batch": batch,
        "p50_ms": statistics.median(e["latency_ms"]["p50"] for e in entries),
        "p99_ms": statistics.median(e["latency_ms"]["p99"] for e in entries),
        "throughput_per_s": statistics.median(e["throughput_per_s"] for e in entries),
        "speedups": [e["speedup_vs_first"] or 1.0 for e in entries],
        "runs": [e["runs"] for e in entries],
        "gpu_mem_bytes": last["gpu_mem_bytes"],
        "ep_nodes": last["ep_nodes"],
        "ep_options": last["ep_options"],
        "ep_option_reasons": last["ep_option_reasons"],
        "warnings": sorted({w for e in entries for w in e["warnings"]}),
    }


def _fidelity_rows(name: str, labels: list[str], outputs: dict[int, list], samples: int) -> list[dict]:
    which, top1 = FIDELITY_OUTPUT.get(name, (0, True))
    ref = np.asarray(outputs[0][which], np.float32)[:samples]
    rows = []
    for i, label in enumerate(labels[1:], start=1):
        metric = OutputFidelity("out")
        metric.update(np.asarray(outputs[i][which], np.float32)[:samples], ref, samples)
        r = metric.result()
        if not top1:
            r["top1_agreement"] = None
        rows.append({"model": name, "variant": label, "samples": samples, "top1_agreement": r["top1_agreement"],
                     "sqnr_db": r["sqnr_db"], "max_abs_error": r["max_abs_error"]})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="squeezenet1.1,resnet50")
    parser.add_argument("--batches", default="1,8,32,128,256", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of timed rounds per group")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--unique-samples", type=int, default=98, help="held-out squeezenet crops")
    parser.add_argument("--fidelity-batch", type=int, default=128, help="the batch whose runs give the fidelity")
    parser.add_argument("--ep", default="cuda", help="cuda (the point of this script); cpu: a dry run of the code")
    parser.add_argument("--json-out", type=Path, help="measure and write the rows here")
    parser.add_argument("--render", type=Path, nargs="+", help="render these JSON files as Markdown (--out)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_h200.md")
    args = parser.parse_args(argv)
    if args.render:
        render([json.loads(p.read_text()) for p in args.render], args.out)
        return 0
    result = {"command": [Path(sys.executable).name, *sys.argv], "environment": collect_environment(),
              "settings": {k: v for k, v in vars(args).items() if k in ("batches", "duration", "warmup", "repeats")},
              "latency": [], "fidelity": [], "seconds": {}, "errors": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            start = time.perf_counter()
            path, calib, data = MODELS[name](Path(tmp))
            files = make_files(name, path, calib, Path(tmp))
            measure(name, files, data, args, result)  # writes the JSON after each batch: a cut-off run keeps it
            result["seconds"][name] = round(time.perf_counter() - start, 1)
            _write(args, result)
    return 0


def _fmt_speed(row: dict) -> tuple[str, str]:
    s = row["speedups"]
    return f"{statistics.median(s):.2f}x", f"{min(s):.2f}-{max(s):.2f}"


def _nodes(ep_nodes: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('ExecutionProvider', '')} {v}" for k, v in ep_nodes.items())


def _options(row: dict) -> str:
    short = {"prefer_nhwc": "nhwc", "enable_cuda_graph": "graph", "fuse_conv_bias": "fused bias"}
    opts = {k: v for k, v in row["ep_options"].items() if k in short}
    auto = row["ep_option_reasons"]
    return ", ".join(f"{short[k]} {v}{' (auto)' if k in auto else ''}" for k, v in opts.items())


def render(results: list[dict], out: Path) -> None:
    """Markdown of measured JSON files: machine, latency table, notes, fidelity table."""
    first = results[0]
    lines = ["# CUDA EP on one H200: FP16 with NHWC and CUDA graphs, INT8 QDQ for the cuda target", "",
             "Machine and versions:", "", "```", describe_environment(first["environment"]), "```", ""]  # fmt: skip
    for r in results:
        lines += [f"Command: `{' '.join(shlex.quote(a) for a in r['command'])}` (settings {r['settings']}, "
                  f"seconds per model {r['seconds']})", ""]  # fmt: skip
    lines += ["## Latency (IO binding; each group interleaved; median of the repeats)", "",
              "| model | variant | batch | p50 ms | p99 ms | throughput /s | speedup vs float32 | range | GPU mem MiB "
              "| CUDA options | nodes per EP |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]  # fmt: skip
    notes: dict[str, list[str]] = {}  # text -> the rows it came from
    shown: dict[str, str] = {}
    for r in results:
        for row in r["latency"]:
            speed, spread = _fmt_speed(row)
            mem = "n/a" if row["gpu_mem_bytes"] is None else f"{row['gpu_mem_bytes'] / 2**20:.0f}"
            lines.append(f"| {row['model']} | {row['variant']} | {row['batch']} | {row['p50_ms']:.3f} | "
                         f"{row['p99_ms']:.3f} | {row['throughput_per_s']:,.0f} | {speed} | {spread} | {mem} | "
                         f"{_options(row)} | {_nodes(row['ep_nodes'])} |")  # fmt: skip
            where = f"{row['model']} {row['variant']}"
            for text in [*row["warnings"], *(f"{k}: {why}" for k, why in row["ep_option_reasons"].items())]:
                key = re.sub(r"'[^']*'", "'…'", text)  # one note for messages that differ in a quoted name only
                shown.setdefault(key, text)
                if where not in notes.setdefault(key, []):
                    notes[key].append(where)
    errors = [e for r in results for e in r.get("errors", [])]
    if errors:
        lines += ["", "Groups that failed (measured again without the variants that ask for a CUDA graph):", "",
                  *[f"- {e}" for e in errors]]  # fmt: skip
    lines += ["", "Warnings and onnxq's option choices from the entries, each once (messages that differ only in a "
              "quoted name once, with the first), with the rows they came from:", ""]  # fmt: skip
    lines += [f"- {shown[key]} ({'; '.join(rows)})" for key, rows in notes.items()] + [""]
    lines += ["## Fidelity against the float32 session, from the measured runs", "",
              "| model | variant | samples | top-1 agreement | SQNR dB | max abs err |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in results:
        for f in r["fidelity"]:
            sqnr = "exact" if f["sqnr_db"] is None else f"{f['sqnr_db']:.1f}"
            agree = "n/a" if f["top1_agreement"] is None else f"{100 * f['top1_agreement']:.2f}%"
            lines.append(f"| {f['model']} | {f['variant']} | {f['samples']} | {agree} | {sqnr} | "
                         f"{f['max_abs_error']:.3g} |")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    from onnxq.errors import OnnxqError

    try:
        sys.exit(main())
    except OnnxqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
