"""``onnxq analyze`` on real models: how long it takes, what it names, and what leaving that node float gives.

For each model: ``onnxq analyze`` in its own process (wall time and peak RSS), default recipe, 32 inputs of the
first half of the held-out set; then the model quantized with ``--exclude-node`` of the first node the advice
names, and both it and the default model evaluated (``onnxq eval --reference``) on the second half, which the
analysis never saw: does its top pick hold on other inputs?

    python bench/analyze.py [--models squeezenet1.1,ppocr_mobile_v2_cls,resnet_digits,mobilenetv2_digits]

Writes bench/results/analyze.md. The sets come from bench/datasets.py (the sample models' from test.npz).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RSS = ("import resource, subprocess, sys, json, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:], "
       "capture_output=True, text=True); print(json.dumps({'rc': r.returncode, 's': time.perf_counter() - t, "
       "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, 'out': r.stdout, "
       "'err': r.stderr}))")  # fmt: skip


def sets(name: str, work: Path) -> tuple[Path, Path, Path, Path]:
    """(model, calibration, analysis half, evaluation half) of ``name``."""
    if name in ("squeezenet1.1", "ppocr_mobile_v2_cls"):
        folder = datasets.SQUEEZENET_DIR if name == "squeezenet1.1" else datasets.PPOCR_DIR
        calib, held = (datasets.squeezenet_sets if name == "squeezenet1.1" else datasets.ppocr_sets)()
        model = folder / "model.onnx"
    else:
        model = datasets.SAMPLE_MODELS / f"{name}.onnx"
        calib = dict(np.load(datasets.SAMPLE_MODELS / "calib.npz"))
        held = {k: v for k, v in np.load(datasets.SAMPLE_MODELS / "test.npz").items() if k != "label"}
    n = len(next(iter(held.values()))) // 2
    paths = [work / f"{name}.{part}.npz" for part in ("calib", "a", "b")]
    for path, data in zip(paths, (calib, {k: v[:n] for k, v in held.items()}, {k: v[n:] for k, v in held.items()}),
                          strict=True):  # fmt: skip
        np.savez(path, **data)
    return model, *paths


def child(cmd: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", RSS, *cmd], capture_output=True, text=True, cwd=ROOT)
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    if stats["rc"]:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stats['err'][-2000:]}")
    return stats


def fidelity(model: Path, reference: Path, data: Path) -> tuple[float | None, float | None]:
    out = child([sys.executable, "-m", "onnxq", "eval", str(model), "--data", str(data), "--reference",
                 str(reference), "--json"])["out"]  # fmt: skip
    found: dict = {}

    def walk(d):
        if isinstance(d, dict):
            for k, v in d.items():
                if k in ("top1_agreement", "sqnr_db") and isinstance(v, (int, float)):
                    found.setdefault(k, v)
                else:
                    walk(v)
        elif isinstance(d, list):
            for x in d:
                walk(x)

    walk(json.loads(out))
    return found.get("top1_agreement"), found.get("sqnr_db")


def one(name: str, work: Path) -> dict:
    model, calib, a, b = sets(name, work)
    q = [sys.executable, "-m", "onnxq", "quantize", str(model), "--calib", str(calib), "--no-progress"]
    stats = child([sys.executable, "-m", "onnxq", "analyze", str(model), "--calib", str(calib), "--data", str(a),
                   "--json", "--report", str(work / f"{name}.analyze.html")])  # fmt: skip
    report = json.loads(stats["out"])
    row = {"model": name, "s": stats["s"], "rss": stats["rss"], "runs": report["runs"], "sqnr_a": report["sqnr_db"],
           "nodes": len(report["nodes"]), "advice": report["advice"][0]}  # fmt: skip
    child([*q, "-o", str(work / f"{name}.int8.onnx")])
    row["int8"] = fidelity(work / f"{name}.int8.onnx", model, b)
    named = [r for r in report["nodes"] if report["advice"][0].startswith(f"{r['node']} (")]
    if named:
        row["node"] = named[0]["node"]
        row["float_a"] = named[0]["sqnr_db_when_left_float"]
        child([*q, "-o", str(work / f"{name}.excl.onnx"), "--exclude-node", row["node"]])
        row["excluded"] = fidelity(work / f"{name}.excl.onnx", model, b)
    return row


def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def render(rows: list[dict], command: str, seconds: float) -> str:
    import onnxruntime

    lines = ["# `onnxq analyze` on real models: its time, its top pick, and whether the pick holds held out", "",
             f"- command: `{command}` ({seconds:.0f} s); onnxruntime {onnxruntime.__version__}, 2-core machine",
             "- analysis on 32 inputs of the first half of each held-out set; the default model and the model with "
             "`--exclude-node` of the first node named are evaluated on the second half (never seen by the "
             "analysis): top-1 agreement with float and SQNR of the outputs", "",
             "| model | quantized nodes | analyze s | peak RSS MB | model runs | SQNR (analysis half) | top pick | "
             "its SQNR left float (analysis half) | default: agreement / SQNR (other half) | pick left float: "
             "agreement / SQNR (other half) |", "|" + " --- |" * 10]  # fmt: skip
    for r in rows:
        d, e = r["int8"], r.get("excluded", (None, None))
        lines.append(f"| {r['model']} | {r['nodes']} | {r['s']:.0f} | {r['rss'] / 2**20:.0f} | {r['runs']} | "
                     f"{_f(r['sqnr_a'])} | {r.get('node', '-')} | {_f(r.get('float_a'))} | "
                     f"{_pct(d[0])} / {_f(d[1])} | {_pct(e[0])} / {_f(e[1])} |")  # fmt: skip
    lines += ["", "## What each analysis advised first", ""] + [f"- {r['model']}: {r['advice']}" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="squeezenet1.1,ppocr_mobile_v2_cls,resnet_digits,mobilenetv2_digits")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name in args.models.split(","):
            rows.append(one(name, Path(tmp)))
            print(rows[-1], flush=True)
    text = render(rows, " ".join(["python", "bench/analyze.py", *argv]), time.perf_counter() - t0)
    out = ROOT / "bench" / "results" / "analyze.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
