"""Int4 on a decoder larger than 2 GB: onnxq's streamed weight-only paths (RTN, and GPTQ run layer by layer) against
ORT's matmul_nbits_quantizer, side by side: wall time, peak RSS, output size, and agreement with the float model.

Model: ``bench/build_smollm2.py --synthetic-large`` (a TinyLlama-sized LLaMA decoder, 22 layers, hidden 2048,
1.1 B parameters, seeded random weights, 4.4 GB of external data; one layer's weights are 176 MB). Both tools
quantize every MatMul to int4, block 128, symmetric, MatMulNBits; onnxq also stores the embedding table as 8-bit
rows (ORT leaves it float). Each quantization runs in its own process under ``/usr/bin/time`` (``--rounds``
rounds, interleaved: onnxq, ORT, onnxq, ...). Agreement: ``onnxq eval --perplexity`` of each int4 model against
the float one on one window of random token ids (random weights: the perplexity itself means nothing; the
next-token agreement and KL say whether the two quantizers made the same model).

    python bench/llm_stream.py --ort-python /tmp/ortq/bin/python [--rounds 2] [--gptq-windows 4]
        [--out bench/results/llm_stream.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from llm_int4 import size_mib, timed  # noqa: E402

MODEL = Path.home() / ".cache/onnxq-models/llama_synthetic_4gb/model.onnx"


def commands(args, out: Path) -> dict[str, tuple[list[str], Path]]:
    onnxq = str(Path(sys.executable).with_name("onnxq"))
    ours, theirs = out / "onnxq_rtn_b128.onnx", out / "ort_default_b128.onnx"
    gptq = {}
    if args.gptq_windows:
        calib = out / "calib.npz"  # random token ids: the weights are random too; this row measures time and memory
        np.savez(calib, input_ids=np.random.default_rng(1).integers(0, 32000, (args.gptq_windows, 256)))
        dest = out / "onnxq_gptq_b128.onnx"
        gptq[f"onnxq gptq b128 (streamed, {args.gptq_windows} x 256 tokens)"] = (
            [onnxq, "quantize", str(MODEL), "-o", str(dest), "--weight-only", "int4", "--block-size", "128",
             "--algorithm", "gptq", "--calib", str(calib), "--no-progress"], dest)  # fmt: skip
    return {**gptq,
        "onnxq rtn b128 (streamed)": ([onnxq, "quantize", str(MODEL), "-o", str(ours), "--weight-only", "int4",
                                       "--block-size", "128", "--no-progress"], ours),
        "ort default b128": ([args.ort_python, "-m", "onnxruntime.quantization.matmul_nbits_quantizer",
                              "--input_model", str(MODEL), "--output_model", str(theirs), "--block_size", "128",
                              "--quant_method", "default", "--symmetric", "True"], theirs),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ort-python", required=True, help="a Python with onnxruntime, onnx and onnx-ir")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gptq-windows", type=int, default=4, help="calibration windows for the GPTQ row (0: no row); "
                    "it runs in the first round only")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "llm_stream.md")
    args = ap.parse_args()
    if not MODEL.is_file():
        raise SystemExit(f"{MODEL} is missing: python bench/build_smollm2.py --synthetic-large")
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(dir=MODEL.parent.parent) as tmp:
        cmds = commands(args, Path(tmp))
        for r in range(args.rounds):
            for name, (cmd, dest) in cmds.items():
                if r and name.startswith("onnxq gptq"):
                    continue
                for old in (dest, dest.with_name(dest.name + ".data")):
                    old.unlink(missing_ok=True)
                row = timed(cmd)
                row["size_mib"] = size_mib(dest) if row["rc"] == 0 else None
                runs.setdefault(name, []).append(row)
                print(f"round {r}: {name}: rc {row['rc']}, {row['wall_s']:.1f} s, {row['peak_rss_mib']:.0f} MiB",
                      flush=True)
        tokens = Path(tmp) / "tokens.npz"
        np.savez(tokens, input_ids=np.random.default_rng(0).integers(0, 32000, (1, 128)))
        onnxq = str(Path(sys.executable).with_name("onnxq"))
        agree = {}
        for name, (_, dest) in cmds.items():
            if runs[name][-1]["rc"] == 0:
                r = timed([onnxq, "eval", str(dest), "--data", str(tokens), "--perplexity", "--reference", str(MODEL),
                           "--json"])  # fmt: skip
                agree[name] = json.loads(r["stdout"]) if r["rc"] == 0 else {"error": r["tail"]}
    report(args, runs, agree)
    return 0


def report(args, runs: dict[str, list[dict]], agree: dict[str, dict]) -> None:
    import onnxruntime

    import onnxq

    lines = ["# Int4 on a 4.4 GB decoder: onnxq's streamed weight-only paths against ORT's quantizer", "",
             f"Machine: {platform.processor() or platform.machine()}, 2 usable cores, "
             f"{Path('/proc/meminfo').read_text().split()[1] if Path('/proc/meminfo').exists() else '?'} kB memory; "
             f"CPython {platform.python_version()}; onnxq {onnxq.__version__}, onnxruntime {onnxruntime.__version__}.",
             f"Command: `python bench/llm_stream.py --ort-python {args.ort_python} --rounds {args.rounds} "
             f"--gptq-windows {args.gptq_windows}`.", "",
             "Model: `bench/build_smollm2.py --synthetic-large` (TinyLlama-sized, 22 layers, 1.1 B parameters, random "
             "weights, 4.4 GB external data; one layer's weights: 176 MB). Both: int4 symmetric, block 128, "
             "MatMulNBits, every MatMul; onnxq also makes the embedding table 8-bit rows.", "",
             "| tool | wall time (median, range) | peak RSS (median, range) | output size | next-token agreement "
             "with float | mean KL |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, rows in runs.items():
        ok = [r for r in rows if r["rc"] == 0]
        if not ok:
            lines.append(f"| {name} | fails: `{rows[-1]['tail'][-1:] }` | | | | |")
            continue
        wall = [r["wall_s"] for r in ok]
        rss = [r["peak_rss_mib"] for r in ok]
        a = agree.get(name, {})
        lines.append(f"| {name} | {statistics.median(wall):.1f} s ({min(wall):.1f}-{max(wall):.1f}) | "
                     f"{statistics.median(rss):,.0f} MiB ({min(rss):,.0f}-{max(rss):,.0f}) | "
                     f"{ok[-1]['size_mib']:.1f} MiB | {_pct(a.get('top1_agreement'))} | {_num(a.get('mean_kl'))} |")
    lines += ["", "Each run in its own process under `/usr/bin/time` (its peak RSS counts the children it waits for: "
              "onnxq's ORT load check of the output runs in one). Rounds interleaved; the GPTQ row runs in the first "
              "round only, calibrated on random token ids (random weights: it measures time and memory; its "
              "agreement is with the float model on the same random window as the others).", ""]  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def _num(v) -> str:
    return "" if v is None else f"{v:.4f}"


if __name__ == "__main__":
    sys.exit(main())
