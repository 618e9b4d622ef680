"""W8A8 on a CPU whose ORT kernels saturate uint8 x int8 (x86 without VNNI): onnxq's choices against ORT's.

For each model, side by side on the same calibration and held-out data, each quantization in a child process
of its own:

* ``onnxq``: the default (uint8 weights with zero point 128 where the probe says the products saturate);
* ``onnxq --reduce-range``: 7-bit int8 weights;
* ``onnxq --weight-type int8``: full-range int8 weights (what a VNNI machine gets), saturating here;
* ``ort``: ``quantize_static`` QDQ, per channel, uint8 activations, int8 weights (its defaults);
* ``ort reduce_range``: the same with ``reduce_range=True``, ORT's documented remedy.

Fidelity (SQNR of the output and top-1 agreement against float on the held-out inputs) comes from the measured
sessions themselves: every model of one row group is timed interleaved with the float model by
``onnxq.measure.bench.bench_models`` (2 threads, batch 1 and 32), repeated ``--repeats`` times.

    python bench/cpu_int8.py [--models resnet_wide_digits,squeezenet1.1,ppocr_mobile_v2_cls] [--repeats 3]
                             [--out bench/results/cpu_int8.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"onnxq": [], "onnxq --reduce-range": ["--reduce-range"],
            "onnxq --weight-type int8": ["--weight-type", "int8"]}  # fmt: skip
ORT_VARIANTS = {"ort": False, "ort reduce_range": True}


def _sets(name: str):
    if name == "squeezenet1.1":
        return datasets.SQUEEZENET_DIR / "model.onnx", *datasets.squeezenet_sets()
    if name == "ppocr_mobile_v2_cls":
        return datasets.PPOCR_DIR / "model.onnx", *datasets.ppocr_sets()
    calib, held = datasets.sample_model_sets()
    return datasets.SAMPLE_MODELS / f"{name}.onnx", calib, held


ORT_CHILD = """
import sys, numpy as np, onnx
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
model, calib, out, reduce = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
m = onnx.load(model)
if next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) < 13:
    m = version_converter.convert_version(m, 13)  # ORT's per-channel DequantizeLinear needs opset 13
    m.ir_version = max(m.ir_version, 7)  # IR 3 wants every initializer a graph input: ORT's output breaks that
    model = out + ".opset13.onnx"
    onnx.save(m, model)
with np.load(calib) as d:
    arrays = {k: d[k] for k in d.files}
class Reader(CalibrationDataReader):
    def __init__(self):
        self.i = 0
    def get_next(self):
        n = len(next(iter(arrays.values())))
        if self.i >= n:
            return None
        self.i += 1
        return {k: v[self.i - 1 : self.i] for k, v in arrays.items()}
quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
"""


def _quantize_all(model: Path, calib_npz: Path, work: Path) -> dict[str, Path]:
    outs = {}
    for label, flags in VARIANTS.items():
        out = work / f"{label.replace(' ', '_').replace('-', '')}.onnx"
        cmd = [sys.executable, "-m", "onnxq", "quantize", str(model), "-o", str(out), "--calib", str(calib_npz),
               "--no-progress", *flags]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        outs[label] = out
    for label, reduce in ORT_VARIANTS.items():
        out = work / f"{label.replace(' ', '_')}.onnx"
        subprocess.run([sys.executable, "-c", ORT_CHILD, str(model), str(calib_npz), str(out), "1" if reduce else "0"],
                       check=True, capture_output=True, text=True)  # fmt: skip
        outs[label] = out
    return outs


def _measure(model: Path, outs: dict[str, Path], held_npz: Path, batch: int, repeats: int) -> dict[str, dict]:
    from onnxq.measure.bench import BenchConfig, bench_models

    paths = [model, *outs.values()]
    labels = ["float", *outs]
    p50s: dict[str, list[float]] = {lab: [] for lab in labels}
    fidelity: dict[str, dict] = {}
    warnings: dict[str, list[str]] = {}
    for _ in range(repeats):
        got: dict[int, list] = {}

        def keep(ep, b, i, outputs, got=got):
            got[i] = outputs

        cfg = BenchConfig(batches=(batch,), threads=2, runs=200 if batch == 1 else 40, data=str(held_npz))
        entries = bench_models(paths, cfg, on_outputs=keep)
        for i, e in enumerate(entries):
            p50s[labels[i]].append(e["latency_ms"]["p50"])
            warnings[labels[i]] = [w for w in e.get("warnings", []) if "int8 weights" in w]
        ref = np.asarray(got[0][0], np.float64)
        for i, lab in enumerate(labels[1:], start=1):
            y = np.asarray(got[i][0], np.float64)
            sqnr = 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - y) ** 2), 1e-300))
            agree = float((ref.reshape(len(ref), -1).argmax(1) == y.reshape(len(y), -1).argmax(1)).mean())
            fidelity[lab] = {"sqnr_db": float(sqnr), "agreement": agree}
    return {lab: {"p50_ms": p50s[lab], **fidelity.get(lab, {}), "saturation_warning": bool(warnings.get(lab))}
            for lab in labels}  # fmt: skip


def _weights_of(path: Path) -> str:
    import onnx

    m = onnx.load(path)
    types = {t.data_type for t in m.graph.initializer if len(t.dims) >= 2}
    names = {2: "uint8", 3: "int8"}
    bits = ""
    for t in m.graph.initializer:
        if t.data_type == 3 and len(t.dims) >= 2:
            from onnx import numpy_helper

            bits = "7-bit" if np.abs(numpy_helper.to_array(t).astype(np.int16)).max() <= 64 else "8-bit"
            break
    return "/".join(sorted(names[t] for t in types if t in names)) + (f" ({bits})" if bits else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet_wide_digits,squeezenet1.1,ppocr_mobile_v2_cls")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_int8.md"))
    args = ap.parse_args()
    from onnxq.runtime.cpu_int8 import u8s8_saturates

    start = time.time()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            model, calib, held = _sets(name)
            np.savez(work / f"{name}.calib.npz", **calib)
            n = len(next(iter(held.values())))
            take = {k: v[: min(n, 32)] for k, v in held.items()}  # the first batch is fed on every run
            np.savez(work / f"{name}.held.npz", **take)
            (work / name).mkdir()
            outs = _quantize_all(model, work / f"{name}.calib.npz", work / name)
            rows = {}
            for batch in (1, 32):
                rows[batch] = _measure(model, outs, work / f"{name}.held.npz", batch, args.repeats)
                brief = {k: (round(float(np.median(v["p50_ms"])), 3), round(v.get("sqnr_db", 0), 1))
                         for k, v in rows[batch].items()}  # fmt: skip
                print(name, batch, json.dumps(brief), flush=True)
            results[name] = {"rows": rows, "weights": {lab: _weights_of(p) for lab, p in outs.items()}}
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    Path(args.out).write_text(_render(results, u8s8_saturates(), args, time.time() - start))
    print(f"wrote {args.out}")
    return 0


def _render(results: dict, saturates: bool, args, took: float) -> str:
    import onnx
    import onnxruntime

    import onnxq

    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    vnni = [f for f in ("avx512_vnni", "avx_vnni", "avx512bw") if f in flags.split()]
    lines = [
        "# W8A8 on ORT's CPU EP where uint8 x int8 saturates: onnxq's weights against ORT's",
        "",
        f"Command: `python bench/cpu_int8.py --models {args.models} --repeats {args.repeats}`; took {took:.0f} s, "
        f"finished {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.",
        "",
        f"Machine: {platform.processor() or 'x86_64'}, {platform.platform()}, 2 threads; CPU flags among "
        f"avx512_vnni/avx_vnni/avx512bw: {', '.join(vnni) or 'none'}; onnxq's probe: uint8 x int8 "
        f"{'saturates' if saturates else 'exact'}. Versions: onnxq {onnxq.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}.",
        "",
        "Each quantization ran in a child process; the float model and the five quantized ones were timed "
        "interleaved in one process (`bench_models`, 2 intra-op threads), p50 in ms as median (min-max) over the "
        "repeats. SQNR and top-1 agreement against float come from the same sessions' outputs on held-out inputs "
        "(up to 32). `warned`: onnxq's session warning that the model has int8-weight products that saturate here.",
        "",
    ]
    for name, r in results.items():
        lines += [f"## {name}", "",
                  "| model | weights | batch | p50 ms | speedup vs float | SQNR dB | top-1 agreement | warned |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for batch, rows in r["rows"].items():
            base = float(np.median(rows["float"]["p50_ms"]))
            for lab, row in rows.items():
                p = row["p50_ms"]
                med = float(np.median(p))
                fid = (f"{row['sqnr_db']:.1f} | {row['agreement']:.1%}" if "sqnr_db" in row and batch != 1
                       else "- | -")  # batch 1 feeds one sample: the batch-32 rows carry the fidelity
                warned = "yes" if row["saturation_warning"] else ""
                lines.append(f"| {lab} | {r['weights'].get(lab, 'float')} | {batch} | {med:.3f} "
                             f"({min(p):.3f}-{max(p):.3f}) | {base / med:.2f}x | {fid} | {warned} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
