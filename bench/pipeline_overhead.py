"""The pass-registry driver against the hand-written quantize it replaced: same bytes, and what the driver costs.

The anchor is onnxq at a given commit (default 4ed7843, the last one before the registry), installed in its
own virtual environment; each quantization runs in its own process, old and new interleaved and alternating
which goes first, repeated. Reported per model and recipe: whether the outputs are byte-identical, the
in-process quantize time of each (the summary's ``total_s``, which leaves out interpreter start and imports),
their ratio (median and range over the repeats) and the wall time of the whole command.

    python bench/pipeline_overhead.py --old-python /work/venv-old/bin/python [--repeats 5]

Set up the anchor once: ``git worktree add /tmp/onnxq-old 4ed7843 && python3.11 -m venv /work/venv-old &&
/work/venv-old/bin/pip install -e /tmp/onnxq-old``. Writes bench/results/pipeline_overhead.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "models"
CASES = {
    "mobilenetv2_digits": (REPO / "sample_models/mobilenetv2_digits.onnx", REPO / "sample_models/calib.npz"),
    "squeezenet1.1": (SHARED / "squeezenet1.1/model.onnx", SHARED / "squeezenet1.1/real_inputs/inputs.npy"),
    "ppocr_mobile_v2_cls": (
        SHARED / "ppocr_mobile_v2_cls/model.onnx",
        SHARED / "ppocr_mobile_v2_cls/real_inputs/input_00.npy",
    ),
}
RECIPES = {"default": [], "per-tensor + cle,bias-correction": ["--per-tensor", "--passes", "cle,bias-correction"]}


def run_once(python: str, model: Path, calib: Path, flags: list[str], out: Path) -> tuple[float, float, str]:
    """(summary total_s, wall s, sha256 of the output) of one quantization in a fresh process."""
    cmd = [
        python,
        "-m",
        "onnxq",
        "quantize",
        str(model),
        "-o",
        str(out),
        "--calib",
        str(calib),
        "--no-progress",
        "--json",
        *flags,
    ]
    start = time.perf_counter()
    # from the output's folder: `python -m` puts the working directory first on sys.path
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=out.parent)
    wall = time.perf_counter() - start
    summary = json.loads(done.stdout)
    return summary["timings"]["total_s"], wall, hashlib.sha256(out.read_bytes()).hexdigest()


def versions(python: str) -> str:
    code = "import onnx, onnxruntime, numpy; print(onnx.__version__, onnxruntime.__version__, numpy.__version__)"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def measure(old: str, repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, calib) in CASES.items():
            if not model.exists():
                continue
            for label, flags in RECIPES.items():
                t = {"old": [], "new": []}
                w = {"old": [], "new": []}
                sha = {}
                for r in range(repeats):
                    order = [("old", old), ("new", sys.executable)]
                    for which, python in order if r % 2 == 0 else order[::-1]:
                        total, wall, sha[which] = run_once(python, model, calib, flags, Path(tmp) / f"{which}.onnx")
                        t[which].append(total)
                        w[which].append(wall)
                ratios = [n / o for n, o in zip(t["new"], t["old"], strict=True)]
                rows.append(
                    {
                        "model": name,
                        "recipe": label,
                        "identical": sha["old"] == sha["new"],
                        "old_s": statistics.median(t["old"]),
                        "new_s": statistics.median(t["new"]),
                        "ratio": statistics.median(ratios),
                        "ratio_min": min(ratios),
                        "ratio_max": max(ratios),
                        "old_wall": statistics.median(w["old"]),
                        "new_wall": statistics.median(w["new"]),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def write(rows: list[dict], old: str, repeats: int, command: str) -> Path:
    lines = [
        "# The pass-registry driver against the hand-written quantize (commit 4ed7843)",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {platform.system()} {platform.release()}",
        f"- new: onnx/onnxruntime/numpy {versions(sys.executable)}, Python {platform.python_version()}",
        f"- old: {old} ({versions(old)})",
        f"- command: `{command}`; {repeats} repeats, old and new interleaved, alternating which runs first",
        "- time: the summary's total_s (load to save, in process); wall: the whole command (interpreter and imports)",
        "",
        "| model | recipe | byte-identical | old s | new s | new/old (median) | range | old wall s | new wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['recipe']} | {'yes' if r['identical'] else 'NO'} | {r['old_s']:.3f} | "
            f"{r['new_s']:.3f} | {r['ratio']:.3f} | {r['ratio_min']:.3f}-{r['ratio_max']:.3f} | "
            f"{r['old_wall']:.2f} | {r['new_wall']:.2f} |"
        )
    path = REPO / "bench" / "results" / "pipeline_overhead.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-python", required=True, help="python of the venv holding the anchor onnxq")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = measure(args.old_python, args.repeats)
    print(write(rows, args.old_python, args.repeats, " ".join(["python", *sys.argv])))


if __name__ == "__main__":
    main()
