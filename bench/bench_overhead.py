"""How much does ``onnxq bench`` add to what it measures? Its p50 against a bare ``session.run`` loop.

For each model, in one process, repetitions alternate between the two measurements (onnxq first on even
repetitions, the bare loop first on odd ones), so that a drift of the machine hits both alike. Both use
the same input (onnxq.data.random_feeds, seed 0, batch 1), the same thread count and a fresh session per
repetition. The bare loop is the least one can write::

    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for _ in range(runs): t0 = perf_counter(); session.run(names, feeds); times.append(perf_counter() - t0)

(``session.run(None, feeds)`` would make the bare loop slower, not faster: ORT's Python wrapper then builds
the list of output names on every call, about 0.25 us here, which is 4% of the 6 us MLP.)

Reported: the median over repetitions of each side's p50, their ratio (onnxq / bare; target within 3%),
and the range of the per-repetition ratios; the whole comparison is repeated ``--trials`` times to show
the spread. Usage::

    python bench/bench_overhead.py [MODEL ...] [--runs N] [--warmup N] [--reps N] [--threads N] [--trials N]
                                   [--out FILE]

Without MODEL: sample_models/*.onnx and ../shared/models/squeezenet1.1/model.onnx where they exist.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxq.data import input_specs, random_feeds
from onnxq.measure.bench import BenchConfig, bench_models
from onnxq.report.environment import collect_environment, describe_environment

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.03


def default_models() -> list[Path]:
    models = sorted((ROOT / "sample_models").glob("*.onnx"))
    squeezenet = ROOT.parent / "shared" / "models" / "squeezenet1.1" / "model.onnx"
    return models + ([squeezenet] if squeezenet.exists() else [])


def bare_p50_ms(path: Path, runs: int, warmup: int, threads: int | None) -> float:
    """p50 of a plain session.run loop, with the same input as onnxq bench feeds."""
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = random_feeds(input_specs(onnx.load(str(path), load_external_data=False)), 1, seed=0)
    names = [o.name for o in session.get_outputs()]
    for _ in range(warmup + 1):  # +1: onnxq's first run is untimed too
        session.run(names, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(names, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.percentile(np.asarray(times) * 1e3, 50))


def onnxq_p50_ms(path: Path, runs: int, warmup: int, threads: int | None) -> float:
    (entry,) = bench_models([path], BenchConfig(runs=runs, warmup_runs=warmup, threads=threads))
    return entry["latency_ms"]["p50"]


def compare(path: Path, args: argparse.Namespace) -> dict:
    ours, bare = [], []
    for rep in range(args.reps):
        sides = [(ours, onnxq_p50_ms), (bare, bare_p50_ms)]
        for out, fn in sides if rep % 2 == 0 else sides[::-1]:
            out.append(fn(path, args.runs, args.warmup, args.threads))
    ratios = [o / b for o, b in zip(ours, bare, strict=True)]
    return {
        "model": path.parent.name + "/" + path.name if path.stem == "model" else path.stem,
        "ours": statistics.median(ours),
        "bare": statistics.median(bare),
        "ratio": statistics.median(ours) / statistics.median(bare),
        "lo": min(ratios),
        "hi": max(ratios),
    }


def render(trials: list[list[dict]], args: argparse.Namespace, command: str, seconds: float) -> str:
    """Markdown: machine and settings, one table row per (model, trial), then the spread over trials."""
    env = collect_environment()
    versions = env.get("versions") or {}
    lines = [
        "# onnxq bench overhead: p50 of `onnxq bench` vs a bare `session.run` loop",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        f"Machine: {describe_environment(env)}; {env.get('memory_total_bytes', 0) // 2**30} GiB RAM.",
        f"Versions: onnxq {versions.get('onnxq')}, onnx {versions.get('onnx')}, onnxruntime "
        f"{versions.get('onnxruntime')} ({env.get('onnxruntime_package')}), numpy {versions.get('numpy')}, "
        f"Python {env.get('python')}.",
        f"Settings: CPU EP, batch 1, {args.runs} timed runs after {args.warmup} warmup runs, "
        f"intra-op threads {args.threads or 'ORT default'}, {args.reps} alternating repetitions per model, "
        f"{args.trials} trials (the whole comparison run again); took {seconds:.0f} s.",
        "",
        "| model | trial | bare p50 ms | onnxq p50 ms | onnxq / bare (median of p50s) "
        "| per-repetition ratio range |",
        "|---|---|---|---|---|---|",
    ]
    for t, rows in enumerate(trials, 1):
        lines += [
            f"| {r['model']} | {t} | {r['bare']:.4f} | {r['ours']:.4f} | {r['ratio']:.4f} | "
            f"{r['lo']:.4f} – {r['hi']:.4f} |"
            for r in rows
        ]
    lines += [
        "",
        f"Spread over trials (target: ratio within 1 ± {TARGET:.0%}):",
        "",
        "| model | ratios over trials | worst abs(ratio - 1) | within target |",
        "|---|---|---|---|",
    ]
    for i, row in enumerate(trials[0]):
        ratios = [rows[i]["ratio"] for rows in trials]
        worst = max(abs(x - 1) for x in ratios)
        lines.append(
            f"| {row['model']} | {', '.join(f'{x:.4f}' for x in ratios)} | {worst:.2%} | "
            f"{'yes' if worst <= TARGET else 'no'} |"
        )
    lines += [
        "",
        "Notes: each side times one `session.run` per batch (onnxq with `time.perf_counter_ns`, the bare "
        "loop with `time.perf_counter`). The bare loop passes the output names: with `None`, ORT's Python "
        "wrapper rebuilds that list on every call, about 0.25 us, 4% of the 6 us MLP. The repetitions "
        "alternate which side goes first. The machine may be shared with other jobs: single repetitions "
        "then stray by 10-30%, which is why the ratio is taken between medians.",
    ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trials", type=int, default=3, help="run the whole comparison this many times")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (default: print only)")
    args = parser.parse_args(argv)
    models = args.models or default_models()
    start = time.perf_counter()
    trials = []
    for trial in range(1, args.trials + 1):
        rows = []
        for path in models:
            r = compare(path, args)
            rows.append(r)
            print(
                f"trial {trial}: {r['model']}: bare {r['bare']:.4f} ms, onnxq {r['ours']:.4f} ms, "
                f"ratio {r['ratio']:.4f} [{r['lo']:.4f}, {r['hi']:.4f}]",
                flush=True,
            )
        trials.append(rows)
    command = "python bench/bench_overhead.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = render(trials, args, command.strip(), time.perf_counter() - start)
    if args.out:
        write_atomically(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
