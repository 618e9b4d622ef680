"""AdaRound against round-to-nearest at W4A8 (int4 per-channel weights, uint8 activations).

For each model, the float model is quantized by ``onnxq.quantize.driver.quantize`` (minmax calibration, int4 symmetric
per-channel weights, uint8 asymmetric activations) with:

* round-to-nearest (RTN), the plain QDQ pass;
* AdaRound with its default options (``--passes adaround``), run ``--repeats`` times for the time spread
  (the runs must give byte-identical models: AdaRound is seeded);
* AdaRound followed by bias correction (``--passes adaround,bias-correction``), and bias correction
  alone, to choose how the two compose;
* AdaRound on the float model's layer inputs (``input: float``) instead of the partly quantized model's;
* for the residual CNN and the MobileNet-style sample models, RTN and AdaRound with per-tensor int4
  weights too, where RTN loses more accuracy than per-channel does.

Each quantized model is run with onnxruntime (CPU EP) on held-out data (bench/datasets.py says how the sets
are built and kept apart from calibration) and compared with the float model: accuracy where there are
labels, top-1 agreement with the float model, and SQNR of the logits (for models ending in Softmax, the
Softmax input: its float value inside the quantized model, before that tensor's own quantization).
Per layer, the pass's own record: output MSE on its cached calibration rows with RTN and with AdaRound,
rows cached, and optimisation seconds.

Usage (from the repository root)::

    python bench/adaround.py [--repeats N] [--models resnet,mobilenetv2,transformer,mlp,squeezenet,ppocr]
                             [--sweep-models resnet,mobilenetv2,ppocr] [--out bench/results/adaround.md]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import datasets  # noqa: E402  (bench/datasets.py, beside this script)
from adaround_report import REPEATED, fmt_row, spread, write_report  # noqa: E402
from fidelity import Reference  # noqa: E402

from onnxq.quantize.driver import quantize  # noqa: E402
from onnxq.quantize.recipe import QuantizeRecipe  # noqa: E402

W4 = dict(weight_type="int4")
ROWS = [
    ("RTN", dict(W4)),
    ("AdaRound", dict(W4, passes=("adaround",))),
    ("AdaRound + BC", dict(W4, passes=("adaround", "bias-correction"))),
    ("BC", dict(W4, passes=("bias-correction",))),
    ("AdaRound, float inputs", dict(W4, passes=("adaround",), pass_options={"adaround": {"input": "float"}})),
]
PER_TENSOR_ROWS = [
    ("RTN, per-tensor", dict(W4, per_channel=False)),
    ("AdaRound, per-tensor", dict(W4, per_channel=False, passes=("adaround",))),
]
# other learning rates and iteration counts, beside the default row, to choose the defaults from numbers
SWEEP_ROWS = [
    (f"AdaRound, {label}", dict(W4, passes=("adaround",), pass_options={"adaround": opts}))
    for label, opts in (
        ("lr 0.01", {"learning_rate": 0.01}),
        ("lr 0.1", {"learning_rate": 0.1}),
        ("300 iterations", {"iterations": 300}),
        ("2000 iterations", {"iterations": 2000}),
        ("BLAS threads as numpy sets them", {"blas_threads": None}),
    )
]
SWEEP_NAMES = {name for name, _ in SWEEP_ROWS}
ALL_MODELS = ("resnet", "mobilenetv2", "transformer", "mlp", "squeezenet", "ppocr")


@dataclass
class Case:
    name: str
    model: Path
    calib: dict[str, np.ndarray]
    evaluation: dict[str, np.ndarray]
    logits: str
    data_note: str
    rows: list = field(default_factory=lambda: list(ROWS))


def cases(selected: set[str], sweep: set[str]) -> list[Case]:
    out = _cases(selected)
    for case in out:
        if any(case.name.startswith(s) for s in sweep):
            case.rows = case.rows + SWEEP_ROWS
    return out


def _cases(selected: set[str]) -> list[Case]:
    out = []
    calib, test = datasets.sample_model_sets()
    note = "calibration: sample_models/calib.npz (200 images); evaluation: sample_models/test.npz (400 others)"
    for short in ("resnet", "mobilenetv2", "transformer", "mlp"):
        path = ROOT / "sample_models" / f"{short}_digits.onnx"
        if short in selected and path.exists():
            extra = PER_TENSOR_ROWS if short in ("resnet", "mobilenetv2") else []
            out.append(Case(path.stem, path, calib, test, "logits", note, ROWS + extra))
    if "squeezenet" in selected and datasets.SQUEEZENET_DIR.exists():
        calib, test = datasets.squeezenet_sets(n_eval=294)
        path = datasets.SQUEEZENET_DIR / "model.onnx"
        note = "calibration: 64 random 224x224 crops (some flipped) of the 14 photos; evaluation: 294 other crops"
        out.append(Case("squeezenet1.1", path, calib, test, _softmax_input(path), note))
    if "ppocr" in selected and datasets.PPOCR_DIR.exists():
        calib, test = datasets.ppocr_sets()
        path = datasets.PPOCR_DIR / "model.onnx"
        note = (
            "calibration: 64 variants of the 18 lines of real_inputs/input_00..02; evaluation: 64 variants of "
            "the 7 lines of input_03..04 (other images); variants = the line, the line rotated 180 degrees, "
            "shorter crops (bench/datasets.py)"
        )
        out.append(Case("ppocr_mobile_v2_cls", path, calib, test, _softmax_input(path), note))
    return out


def _softmax_input(path: Path) -> str:
    model = onnx.load(str(path))
    return next(n.input[0] for n in model.graph.node if n.op_type == "Softmax")


# --- measuring ------------------------------------------------------------------------------------


def _adaround_entry(summary) -> dict | None:
    return next((e for e in summary.passes if e["pass"] == "adaround"), None)


def run_case(case: Case, repeats: int, work: Path) -> list[dict]:
    ref = Reference.of(case, work)
    rows = [ref.float_row()]
    for name, kw in case.rows:
        out_path = work / f"{case.name}_q.onnx"
        runs = []
        loads = [os.getloadavg()[0]]
        for _ in range(repeats if name == REPEATED else 1):
            t = time.perf_counter()
            summary = quantize(case.model, out_path, ref.calib_path, QuantizeRecipe(**kw))
            runs.append((time.perf_counter() - t, summary, hashlib.sha256(out_path.read_bytes()).hexdigest()))
        row = {"row": name, **ref.metrics_of(out_path)}
        row["quantize_s"] = [r[0] for r in runs]
        row["adaround_s"] = [r[1].timings.get("adaround_s", 0.0) for r in runs]
        row["identical"] = len({r[2] for r in runs}) == 1
        row["load"] = (loads[0], os.getloadavg()[0])  # 1-minute load average before and after
        row["adaround"] = _adaround_entry(runs[0][1])
        rows.append(row)
        print(f"  {case.name}: {name}: {fmt_row(row)} ({spread(row['quantize_s'])} s)", flush=True)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default=",".join(ALL_MODELS))
    parser.add_argument(
        "--sweep-models", default="resnet,mobilenetv2,ppocr", help="models that also get the lr/iterations rows"
    )
    parser.add_argument("--save-json", type=Path, help="also write every row's numbers to this JSON file")
    parser.add_argument("--render", type=Path, help="only rewrite the report from a --save-json file")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adaround.md")
    args = parser.parse_args(argv[1:])
    if args.render:
        saved = json.loads(args.render.read_text())
        by_name = {c.name: c for c in _cases(set(ALL_MODELS))}
        results = [(by_name[name], rows) for name, rows in saved["cases"].items()]
        write_report(args.out, results, saved["argv"], saved["repeats"], saved["seconds"], SWEEP_NAMES)
        print(f"wrote {args.out}")
        return 0
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-adaround-") as tmp:
        for case in cases(set(args.models.split(",")), set(args.sweep_models.split(",")) - {""}):
            print(f"{case.name}:", flush=True)
            results.append((case, run_case(case, args.repeats, Path(tmp))))
    seconds = time.time() - started
    write_report(args.out, results, argv, args.repeats, seconds, SWEEP_NAMES)
    if args.save_json:
        saved = {"argv": argv, "repeats": args.repeats, "seconds": seconds}
        saved["cases"] = {case.name: rows for case, rows in results}
        args.save_json.write_text(json.dumps(saved, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
