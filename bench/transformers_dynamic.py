"""onnxq --dynamic against ORT's quantize_dynamic (per channel) on paraphrase-MiniLM-L3: latency repeated.

Both models run the same fused kernels after ORT's optimiser (DynamicQuantizeMatMul, MatMulIntegerToFloat);
this measures whether their speed differs beyond the spread: the two quantized models and the float one in one
process, interleaved sentence by sentence (bench/transformers.py's loop), ``--repeats`` times, and the
fidelity of both over all 286 sentences (calibration-free methods, so all are held out).

    python bench/transformers_dynamic.py [--repeats 5] [--rounds 3]

Writes bench/results/transformers_dynamic.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transformers as tb  # noqa: E402

ORT = "from onnxruntime.quantization import quantize_dynamic, QuantType; import sys; " \
      "quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8, per_channel=True)"  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    model = Path(subprocess.run([str(tb.FETCH)], capture_output=True, text=True, check=True).stdout.split()[-1])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"float": model, "onnxq --dynamic": Path(tmp) / "d.onnx", "ORT quantize_dynamic (per-channel)":
                 Path(tmp) / "o.onnx"}  # fmt: skip
        subprocess.run([sys.executable, "-m", "onnxq", "quantize", str(model), "-o", str(paths["onnxq --dynamic"]),
                        "--dynamic", "--no-progress"], check=True, capture_output=True)  # fmt: skip
        subprocess.run([sys.executable, "-c", ORT, str(model), str(paths["ORT quantize_dynamic (per-channel)"])],
                       check=True, capture_output=True)  # fmt: skip
        every = tb.feeds(range(0, 286))
        embed = {n: np.concatenate([tb.session(q).run(["461"], f)[0] for f in every]) for n, q in paths.items()}
        runs = [tb.latencies(paths, args.rounds) for _ in range(args.repeats)]
    write(runs, embed, args)


def write(runs: list[dict[str, float]], embed: dict, args) -> None:
    import onnxruntime

    lines = ["# onnxq --dynamic and ORT's quantize_dynamic on paraphrase-MiniLM-L3: latency, repeated", "",
             f"- command: `python bench/transformers_dynamic.py --repeats {args.repeats} --rounds {args.rounds}`; "
             f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}, 2 threads, batch 1, every held-out "
             "sentence at its length, the three models interleaved in one process",
             "- fidelity over all 286 sentences (nearest-neighbour agreement with float, embedding SQNR)", "",
             "| model | agreement | SQNR dB | p50 ms per repeat | speedup vs float per repeat | median speedup |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name in runs[0]:
        agree, sqnr = tb.fidelity(embed["float"], embed[name]) if name != "float" else (1.0, float("inf"))
        p50 = [r[name] for r in runs]
        speed = [r["float"] / r[name] for r in runs]
        lines.append(f"| {name} | {100 * agree:.1f}% | {sqnr:.1f} | {', '.join(f'{v:.3f}' for v in p50)} | "
                     f"{', '.join(f'{v:.2f}' for v in speed)} | {statistics.median(speed):.2f}x |")  # fmt: skip
    ratio = [r["ORT quantize_dynamic (per-channel)"] / r["onnxq --dynamic"] for r in runs]
    lines += ["", f"ORT's p50 / onnxq's p50 per repeat: {', '.join(f'{v:.3f}' for v in ratio)} "
              f"(above 1: onnxq faster)."]  # fmt: skip
    out = tb.REPO / "bench" / "results" / "transformers_dynamic.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
