"""The entropy (KL) threshold search of one tensor: onnxq's vectorized search against two references, each timed
in a process of its own.

* ``onnxq``: ``EntropyObserver.finalize`` (2048 bins of |x|, 128 levels, the KL curve of every threshold from prefix
  sums, :func:`onnxq.quantize.observers.kl_divergence_curve`);
* ``loop``: the same TensorRT procedure written one threshold at a time with explicit P and Q arrays (the direct
  reference of tests/test_calibrate.py), on the same 2048 bins;
* ``ort``: ONNX Runtime's ``HistogramCollector.get_entropy_threshold`` on its own signed histogram of the same data,
  4096 bins over [-max|x|, max|x|] with 256 quantized bins, i.e. the same resolution and 128 levels per side.

The data are 100,000 seeded standard-normal values (a typical activation tensor's calibration sample). Each child
process builds its histogram (not timed), then times the search ``--repeats`` times; the parent runs the three
children in turn ``--rounds`` times (A B C, B C A, ...) and writes bench/results/entropy_search.md with each method's
median and range, the ratios to onnxq within each round, the thresholds found, the machine and the command.

    python bench/entropy_search.py [--rounds 5] [--repeats 3] [--skip-loop]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = ("onnxq", "loop", "ort")
SAMPLES, SEED = 100_000, 0


def _data() -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal(SAMPLES).astype(np.float32)


def kl_loop(counts: np.ndarray, levels: int, eps: float = 1e-4) -> np.ndarray:
    """TensorRT's KL(P || Q) for each threshold of ``i`` bins, one threshold at a time (as in the tests)."""
    counts = np.asarray(counts, dtype=np.float64)
    out = []
    for i in range(levels, len(counts) + 1):
        p = counts[:i].copy()
        p[i - 1] += counts[i:].sum()
        level_of = np.arange(i) * levels // i
        q = np.zeros(i)
        for j in range(levels):
            members = level_of == j
            support = members & (p > 0)
            if support.any():
                q[support] = counts[:i][members].sum() / support.sum()
        if q.sum() == 0:
            out.append(np.inf)
            continue
        p, q = p / p.sum(), q / q.sum()
        holes = (p > 0) & (q == 0)
        if holes.any():
            q = np.where(holes, eps, q * (1 - eps * holes.sum()))
        m = p > 0
        out.append(float(np.sum(p[m] * np.log(p[m] / q[m]))))
    return np.array(out)


def _prepare(method: str, x: np.ndarray):
    """The search to time, as a zero-argument callable returning the upper threshold; its setup is not timed."""
    if method == "onnxq":
        from onnxq.quantize.observers import EntropyObserver

        obs = EntropyObserver()
        obs.update(x)
        return lambda: obs.finalize()[1]
    if method == "loop":
        from onnxq.quantize.observers import AbsHistogram

        hist = AbsHistogram(2048)
        hist.add(x)
        counts = hist.counts.copy()
        counts[0] -= hist.zeros
        return lambda: (128 + int(np.argmin(kl_loop(counts, 128)))) * hist.bin_width
    from onnxruntime.quantization.calibrate import HistogramCollector

    top = float(np.abs(x).max())
    hist, edges = np.histogram(x, bins=4096, range=(-top, top))
    collector = HistogramCollector("entropy", symmetric=True, num_bins=4096, num_quantized_bins=256,
                                   percentile=99.99, scenario="same")  # fmt: skip
    histogram = (hist, edges, np.float32(x.min()), np.float32(x.max()))
    return lambda: float(collector.get_entropy_threshold(histogram, 256)[1])


def child(method: str, repeats: int) -> None:
    search = _prepare(method, _data())
    times, threshold = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        threshold = search()
        times.append(time.perf_counter() - start)
    print(json.dumps({"method": method, "seconds": times, "threshold": threshold}))


def _run_child(method: str, repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, "--repeats", str(repeats)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def measure(methods: list[str], rounds: int, repeats: int) -> list[dict[str, dict]]:
    runs = []
    for r in range(rounds):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]  # each method takes each slot in turn
        runs.append({m: _run_child(m, repeats) for m in order})
        print(f"round {r + 1}: " + ", ".join(f"{m} {min(v['seconds']) * 1e3:.1f} ms" for m, v in runs[-1].items()),
              flush=True)  # fmt: skip
    return runs


def _environment() -> list[str]:
    import platform

    import onnx
    import onnxruntime

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        cpu = platform.processor()
    import os

    return [f"- machine: {cpu}, {os.cpu_count()} cores, shared with other jobs while this ran: the ratios within "
            "a round are meaningful, the absolute times are not",
            f"- versions: Python {platform.python_version()}, numpy {np.__version__}, onnx {onnx.__version__}, "
            f"onnxruntime {onnxruntime.__version__}"]  # fmt: skip


def write(runs: list[dict[str, dict]], methods: list[str], command: str) -> Path:
    best = {m: [min(run[m]["seconds"]) for run in runs] for m in methods}  # best of the repeats, per round
    lines = ["# Entropy threshold search of one tensor: onnxq against a direct loop and ONNX Runtime", "",
             f"- command: `{command}`", *_environment(),
             f"- data: {SAMPLES:,} seeded standard-normal values; each method in its own process; time of the search "
             "alone (the histogram is built before the clock starts); best of the repeats in each round", "",
             "| method | median ms | range ms | median ratio to onnxq (per round) | threshold found |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for m in methods:
        ratios = [b / o for b, o in zip(best[m], best["onnxq"], strict=True)]
        threshold = runs[-1][m]["threshold"]
        lines.append(f"| {m} | {statistics.median(best[m]) * 1e3:.2f} | {min(best[m]) * 1e3:.2f} - "
                     f"{max(best[m]) * 1e3:.2f} | {statistics.median(ratios):.1f}x | {threshold:.4f} |")  # fmt: skip
    lines += [
        "",
        "The thresholds differ by method as their histograms differ: onnxq and the loop share one (2048 bins "
        "of |x| over a power-of-two range, so the loop must find exactly onnxq's threshold); ORT bins the signed "
        "values over [-max|x|, max|x|] and searches symmetric windows, so its edges fall elsewhere.",
        "",
    ]
    if "loop" in methods:
        same = all(math.isclose(run["loop"]["threshold"], run["onnxq"]["threshold"]) for run in runs)
        lines.append(f"- loop and onnxq found the same threshold in every round: {'yes' if same else 'NO'}")
    path = REPO / "bench" / "results" / "entropy_search.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-loop", action="store_true", help="leave out the slow direct loop")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.repeats)
    methods = [m for m in METHODS if not (args.skip_loop and m == "loop")]
    runs = measure(methods, args.rounds, args.repeats)
    print(write(runs, methods, " ".join(["python", "bench/entropy_search.py", *sys.argv[1:]])))


if __name__ == "__main__":
    main()
