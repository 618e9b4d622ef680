"""onnxq against ONNX Runtime's quantizer on a real transformer encoder: paraphrase-MiniLM-L3-v2.

Same model, same sentences: the first 100 of the 286 real sentences calibrate, the other 186 evaluate. Each
quantization runs in its own process (time and peak RSS of that process). Fidelity is against the float model
on the held-out sentences, each cut to its own length: nearest-neighbour agreement (the nearest other sentence
by cosine of the pooled embedding ``461`` is the same as under float) and embedding SQNR. Latency: batch 1,
2 intra-op threads, every held-out sentence at its real length, all models in one process, interleaved sentence
by sentence with the order rotated each round; p50 per sentence and the speedup over the float model.

    python bench/transformers.py [--rounds 3]

Needs the model: ../shared/tools/get-paraphrase-minilm. Writes bench/results/transformers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SENTENCES = REPO.parent / "shared" / "models" / "paraphrase_minilm_l3" / "sentences_padded.npz"
FETCH = REPO.parent / "shared" / "tools" / "get-paraphrase-minilm"
CALIB, HELD_OUT = range(0, 100), range(100, 286)

ORT_CHILD = """
import sys, json, numpy as np
from onnxruntime.quantization import quantize_dynamic, quantize_static, QuantType, QuantFormat, CalibrationDataReader
src, out, kind, data = sys.argv[1:5]
if kind.startswith("dynamic"):
    quantize_dynamic(src, out, weight_type=QuantType.QInt8, per_channel=kind == "dynamic-pc")
else:
    d = np.load(data); lens = d["attention_mask"].sum(1)
    class Reader(CalibrationDataReader):
        def __init__(self):
            ids, mask = d["input_ids"], d["attention_mask"]
            self.it = iter([{"input_ids": ids[i:i+1, :lens[i]], "attention_mask": mask[i:i+1, :lens[i]]}
                            for i in range(100)])
        def get_next(self):
            return next(self.it, None)
    quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
"""


def sentences() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = np.load(SENTENCES)
    return d["input_ids"], d["attention_mask"], d["attention_mask"].sum(1)


def feeds(rows: range) -> list[dict[str, np.ndarray]]:
    ids, mask, lens = sentences()
    return [{"input_ids": ids[i : i + 1, : lens[i]], "attention_mask": mask[i : i + 1, : lens[i]]} for i in rows]


def run_child(cmd: list[str]) -> dict:
    """Run a quantization in its own process; its wall time and peak RSS (ru_maxrss of that child alone)."""
    wrapper = (
        "import resource, subprocess, sys, json, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:]); "
        "print(json.dumps({'rc': r.returncode, 's': time.perf_counter() - t, "
        "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))"
    )
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    if stats["rc"]:
        raise RuntimeError(f"{cmd} failed: {done.stderr[-2000:]}")
    return stats


def quantize_all(model: Path, tmp: Path) -> dict[str, dict]:
    ids, mask, lens = sentences()
    (tmp / "feeds").mkdir()
    for i in CALIB:
        np.savez(
            tmp / "feeds" / f"{i:03d}.npz",
            input_ids=ids[i : i + 1, : lens[i]],
            attention_mask=mask[i : i + 1, : lens[i]],
        )
    np.savez(tmp / "padded.npz", input_ids=ids[list(CALIB)], attention_mask=mask[list(CALIB)])
    onnxq = [sys.executable, "-m", "onnxq", "quantize", str(model), "--no-progress"]
    jobs = {
        "onnxq static W8A8, default (preset auto: SmoothQuant; sentence feeds)": [
            *onnxq, "-o", str(tmp / "s.onnx"), "--calib", str(tmp / "feeds"),
        ],
        "onnxq static W8A8 --preset none (sentence feeds)": [
            *onnxq,
            "-o",
            str(tmp / "sq.onnx"),
            "--calib",
            str(tmp / "feeds"),
            "--preset",
            "none",
        ],
        "onnxq static W8A8, default (padded batches + mask)": [
            *onnxq,
            "-o",
            str(tmp / "p.onnx"),
            "--calib",
            str(tmp / "padded.npz"),
        ],
        "onnxq static W8A8 --target-sqnr 25 (mixed precision, sentence feeds)": [
            *onnxq,
            "-o",
            str(tmp / "mp.onnx"),
            "--calib",
            str(tmp / "feeds"),
            "--target-sqnr",
            "25",
        ],
        "onnxq dynamic": [*onnxq, "-o", str(tmp / "d.onnx"), "--dynamic"],
        "ORT quantize_static (QDQ, per-channel)": [
            sys.executable,
            "-c",
            ORT_CHILD,
            str(model),
            str(tmp / "os.onnx"),
            "static",
            str(SENTENCES),
        ],
        "ORT quantize_dynamic": [sys.executable, "-c", ORT_CHILD, str(model), str(tmp / "od.onnx"), "dynamic", ""],
        "ORT quantize_dynamic (per-channel)": [
            sys.executable,
            "-c",
            ORT_CHILD,
            str(model),
            str(tmp / "odp.onnx"),
            "dynamic-pc",
            "",
        ],
    }
    out = {}
    for name, cmd in jobs.items():
        stats = run_child(cmd)
        path = Path(cmd[cmd.index("-o") + 1]) if "-o" in cmd else Path(cmd[4])
        out[name] = {"path": path, **stats}
        print(name, stats, flush=True)
    return out


def session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    # several sessions interleaved: spinning pool threads of the idle ones would steal the 2 cores
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def fidelity(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    def nearest(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        s = e @ e.T
        np.fill_diagonal(s, -2)
        return s.argmax(1)

    agreement = float((nearest(ref) == nearest(got)).mean())
    return agreement, float(10 * np.log10(np.square(ref).sum() / np.square(ref - got).sum()))


def latencies(paths: dict[str, Path], rounds: int) -> dict[str, float]:
    sessions = {name: session(p) for name, p in paths.items()}
    held = feeds(HELD_OUT)
    for s in sessions.values():  # warm-up
        for f in held[:30]:
            s.run(["461"], f)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(rounds):
        for k, f in enumerate(held):
            shift = (r * len(held) + k) % len(names)
            for name in names[shift:] + names[:shift]:
                t = time.perf_counter()
                sessions[name].run(["461"], f)
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) * 1e3 for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = Path(subprocess.run([str(FETCH)], capture_output=True, text=True, check=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        results = quantize_all(model, tmp)
        paths = {"float": model, **{n: r["path"] for n, r in results.items()}}
        held = feeds(HELD_OUT)
        embed = {n: np.concatenate([session(p).run(["461"], f)[0] for f in held]) for n, p in paths.items()}
        lat = latencies(paths, args.rounds)
        sizes = {n: os.path.getsize(p) for n, p in paths.items()}
    write(results, embed, lat, sizes, args.rounds)


def write(results, embed, lat, sizes, rounds) -> None:
    import onnx
    import onnxruntime

    lines = [
        "# onnxq and ONNX Runtime's quantizer on paraphrase-MiniLM-L3-v2 (3-layer BERT encoder, opset 17)",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        f"- versions: onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}",
        f"- command: `python bench/transformers.py --rounds {rounds}`",
        "- data: 286 real sentences (shared/models/paraphrase_minilm_l3); 100 calibrate, 186 evaluate, each at its "
        "own length (6-52 tokens); 'padded batches' gives onnxq the 100 calibration sentences padded to 52 with "
        "their attention mask",
        "- agreement: the nearest other held-out sentence by cosine of the embedding is the float model's; SQNR of "
        "the embeddings against float",
        "- latency: batch 1, 2 threads (no spinning: the sessions are interleaved), p50 per sentence over every "
        "held-out sentence x rounds, all models in one process interleaved; quantization time and peak RSS: each "
        "quantization in its own process",
        "",
        "| model | agreement | SQNR dB | size MB | size vs float | p50 ms | speedup vs float | quantize s "
        "| peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ref = embed["float"]
    for name in embed:
        agreement, sqnr = fidelity(ref, embed[name]) if name != "float" else (1.0, float("inf"))
        r = results.get(name, {})
        q = f"{r['s']:.1f}" if r else "-"
        rss = f"{r['rss'] / 2**20:.0f}" if r else "-"
        lines.append(
            f"| {name} | {100 * agreement:.1f}% | {sqnr:.1f} | {sizes[name] / 1e6:.1f} | "
            f"{sizes[name] / sizes['float']:.2f} | {lat[name]:.3f} | {lat['float'] / lat[name]:.2f}x | {q} | {rss} |"
        )
    path = REPO / "bench" / "results" / "transformers.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
