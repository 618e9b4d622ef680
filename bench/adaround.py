"""AdaRound against round-to-nearest at W4A8 (int4 per-channel weights, uint8 activations).

For each model, the float model is quantized by ``onnxq.api.quantize`` (minmax calibration, int4 symmetric
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
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import datasets  # noqa: E402  (bench/datasets.py, beside this script)

from onnxq.api import quantize  # noqa: E402
from onnxq.environment import collect_environment, describe_environment  # noqa: E402
from onnxq.model import load_model  # noqa: E402
from onnxq.passes.adaround import AdaRoundConfig  # noqa: E402
from onnxq.recipe import QuantizeRecipe  # noqa: E402

W4 = dict(weight_type="int4")
ROWS = [
    ("RTN", dict(W4)),
    ("AdaRound", dict(W4, passes=("adaround",))),
    ("AdaRound + BC", dict(W4, passes=("adaround", "bias-correction"))),
    ("BC", dict(W4, passes=("bias-correction",))),
    ("AdaRound, float inputs", dict(W4, passes=("adaround",), adaround={"input": "float"})),
]
PER_TENSOR_ROWS = [
    ("RTN, per-tensor", dict(W4, per_channel=False)),
    ("AdaRound, per-tensor", dict(W4, per_channel=False, passes=("adaround",))),
]
# other learning rates and iteration counts, beside the default row, to choose the defaults from numbers
SWEEP_ROWS = [
    (f"AdaRound, {label}", dict(W4, passes=("adaround",), adaround=opts))
    for label, opts in (
        ("lr 0.01", {"learning_rate": 0.01}),
        ("lr 0.1", {"learning_rate": 0.1}),
        ("300 iterations", {"iterations": 300}),
        ("2000 iterations", {"iterations": 2000}),
        ("BLAS threads as numpy sets them", {"blas_threads": None}),
    )
]
REPEATED = "AdaRound"
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


def _outputs(path: Path, feeds: dict[str, np.ndarray], logits: str) -> tuple[np.ndarray, np.ndarray]:
    """(first graph output, logits) of ``path`` on ``feeds``, in batches of the graph's fixed batch (or 32)."""
    model = load_model(path)
    if logits not in {o.name for o in model.graph.output}:
        model.graph.output.add().name = logits
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    first = sess.get_outputs()[0].name
    name, arr = next(iter(feeds.items()))
    dim0 = sess.get_inputs()[0].shape[0]
    bs = dim0 if isinstance(dim0, int) and dim0 > 0 else 32
    outs, logs = [], []
    for start in range(0, len(arr), bs):
        o, lg = sess.run([first, logits], {name: arr[start : start + bs]})
        outs.append(o)
        logs.append(lg)
    return np.concatenate(outs), np.concatenate(logs)


def _metrics(out, logits, ref_out, ref_logits, labels) -> dict:
    pred = out.reshape(len(out), -1).argmax(1)
    ref_pred = ref_out.reshape(len(ref_out), -1).argmax(1)
    err = float(np.square(logits.astype(np.float64) - ref_logits.reshape(logits.shape)).sum())
    sig = float(np.square(ref_logits.astype(np.float64)).sum())
    return {
        "accuracy": None if labels is None else float((pred == labels).mean()),
        "agreement": float((pred == ref_pred).mean()),
        "sqnr_db": float("inf") if err == 0 else 10 * np.log10(sig / err),
    }


def _adaround_entry(summary) -> dict | None:
    return next((e for e in summary.passes if e["pass"] == "adaround"), None)


def run_case(case: Case, repeats: int, work: Path) -> list[dict]:
    calib_path = work / f"{case.name}_calib.npz"
    np.savez(calib_path, **case.calib)
    feeds = {k: v for k, v in case.evaluation.items() if k != "label"}
    labels = case.evaluation.get("label")
    ref_out, ref_logits = _outputs(case.model, feeds, case.logits)
    rows = [{"row": "float", **_metrics(ref_out, ref_logits, ref_out, ref_logits, labels)}]
    for name, kw in case.rows:
        out_path = work / f"{case.name}_q.onnx"
        runs = []
        loads = [os.getloadavg()[0]]
        for _ in range(repeats if name == REPEATED else 1):
            t = time.perf_counter()
            summary = quantize(case.model, out_path, calib_path, QuantizeRecipe(**kw))
            runs.append((time.perf_counter() - t, summary, hashlib.sha256(out_path.read_bytes()).hexdigest()))
        out, logits = _outputs(out_path, feeds, case.logits)
        row = {"row": name, **_metrics(out, logits, ref_out, ref_logits, labels)}
        row["quantize_s"] = [r[0] for r in runs]
        row["adaround_s"] = [r[1].timings.get("adaround_s", 0.0) for r in runs]
        row["identical"] = len({r[2] for r in runs}) == 1
        row["load"] = (loads[0], os.getloadavg()[0])  # 1-minute load average before and after
        row["adaround"] = _adaround_entry(runs[0][1])
        rows.append(row)
        print(f"  {case.name}: {name}: {_fmt_row(row)} ({_spread(row['quantize_s'])} s)", flush=True)
    return rows


# --- reporting ------------------------------------------------------------------------------------


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _db(x: float) -> str:
    return "inf" if x == float("inf") else f"{x:.2f}"


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _load(load) -> str:
    return "-" if not load else f"{load[0]:.1f}/{load[1]:.1f}"


def _fmt_row(r: dict) -> str:
    return f"acc {_pct(r['accuracy'])} agree {_pct(r['agreement'])} sqnr {_db(r['sqnr_db'])} dB"


def summary_table(case: Case, rows: list[dict]) -> list[str]:
    lines = [
        f"### {case.name}",
        "",
        f"Data: {case.data_note}. Logits compared: `{case.logits}`.",
        "",
        "| recipe (W4A8) | accuracy | top-1 agreement | logit SQNR dB | layers rounded | layers worse than RTN "
        "(kept RTN) | MSE ratio (geo. mean) | AdaRound s | quantize s, median (range) | load before/after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r.get("adaround")
        layers = a["per_layer"].values() if a else []
        worse = sum(x["mse_adaround"] > x["mse_nearest"] for x in layers)
        worse_text = f"{worse} ({a['layers_kept_nearest']})" if a else "-"
        lines.append(
            f"| {r['row']} | {_pct(r['accuracy'])} | {_pct(r['agreement'])} | {_db(r['sqnr_db'])} | "
            f"{a['layers'] if a else '-'} | {worse_text} | "
            f"{a['mse_ratio'] if a else '-'} | {_spread(r.get('adaround_s', [])) if a else '-'} | "
            f"{_spread(r.get('quantize_s', []))} | {_load(r.get('load'))} |"
        )
    return lines


def layer_table(case: Case, rows: list[dict]) -> list[str]:
    a = next(r for r in rows if r["row"] == REPEATED)["adaround"]
    lines = [
        f"#### {case.name}: per layer (AdaRound, default options; MSE on the pass's cached calibration rows)",
        "",
        "| layer | op | rows | MSE RTN | MSE AdaRound | AdaRound / RTN | weights changed | kept RTN | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for node, x in a["per_layer"].items():
        ratio = x["mse_adaround"] / x["mse_nearest"] if x["mse_nearest"] > 0 else float("nan")
        lines.append(
            f"| `{node}` | {x['op_type']} | {x['rows']} | {x['mse_nearest']:.4g} | {x['mse_adaround']:.4g} | "
            f"{ratio:.3f} | {100 * x['changed_fraction']:.1f}% | {'yes' if x['kept_nearest'] else 'no'} | "
            f"{x['seconds']:.2f} |"
        )
    lines.append(
        f"\nRow collection (onnxruntime runs of the float and partly quantized models, {len(a['per_layer'])} "
        f"layers): {a['collect_s']:.1f} s of the pass's {a['seconds']:.1f} s."
    )
    if a["skipped"]:
        lines.append(f"Left to RTN: {a['skipped']}.")
    return lines


def _closed(ada: float, rtn: float, ref: float) -> str:
    lost = ref - rtn
    return "n/a (RTN loses nothing)" if lost <= 0 else f"{100 * (ada - rtn) / lost:.0f}%"


def _not_lower(node: str, x: dict) -> str:
    if x["mse_adaround"] == x["mse_nearest"] and x["changed_fraction"] == 0:
        return f"`{node}`: equal, AdaRound converged to the RTN integers"
    return f"`{node}`: {x['mse_adaround'] / x['mse_nearest']:.3f}x RTN"


def targets(results: list[tuple[Case, list[dict]]]) -> list[str]:
    lines = []
    for case, rows in results:
        by = {r["row"]: r for r in rows}
        ref, rtn, ada = by["float"], by["RTN"], by[REPEATED]
        a = ada["adaround"]
        worse = [n for n, x in a["per_layer"].items() if x["mse_adaround"] >= x["mse_nearest"]]
        text = f"- **{case.name}**: "
        if ref["accuracy"] is not None:
            text += (
                f"accuracy float {_pct(ref['accuracy'])}, RTN {_pct(rtn['accuracy'])}, AdaRound "
                f"{_pct(ada['accuracy'])}: gap closed {_closed(ada['accuracy'], rtn['accuracy'], ref['accuracy'])}"
            )
            if "RTN, per-tensor" in by:
                pt_r, pt_a = by["RTN, per-tensor"], by["AdaRound, per-tensor"]
                text += (
                    f" (per-tensor: RTN {_pct(pt_r['accuracy'])}, AdaRound {_pct(pt_a['accuracy'])}, gap closed "
                    f"{_closed(pt_a['accuracy'], pt_r['accuracy'], ref['accuracy'])})"
                )
            text += "; "
        text += (
            f"logit SQNR {_db(rtn['sqnr_db'])} -> {_db(ada['sqnr_db'])} dB "
            f"({ada['sqnr_db'] - rtn['sqnr_db']:+.2f} dB); agreement {_pct(rtn['agreement'])} -> "
            f"{_pct(ada['agreement'])}; reconstruction MSE lower than RTN on "
            f"{len(a['per_layer']) - len(worse)}/{len(a['per_layer'])} layers"
            + (f" (not on {', '.join(_not_lower(w, a['per_layer'][w]) for w in worse)})" if worse else "")
            + f"; quantize with AdaRound {_spread(ada['quantize_s'])} s over {len(ada['quantize_s'])} runs, "
            f"byte-identical: {'yes' if ada['identical'] else 'NO'}."
        )
        lines.append(text)
    return lines


NOTES = [
    "## How to read this",
    "",
    "- Accuracy, agreement and SQNR are measured on held-out data (never the calibration set), by running the "
    "quantized model in onnxruntime's CPU EP: what runs is the written model, not a simulation.",
    "- The per-layer MSE is the pass's own measurement on its cached calibration rows (the rows it optimised "
    "on): the mean squared error of the layer's output, with the layer's input taken from the partly "
    "quantized model and the target from the float model, for RTN integers and for AdaRound's.",
    "- 'layers worse than RTN' counts the raw AdaRound result; with `never_worse` (default on) such a layer "
    "keeps its RTN integers, and 'kept RTN' counts those.",
    "- Times are wall-clock on a 2-core machine shared with other jobs; the load average before and after each "
    "row is given. 'quantize s' is the whole `onnxq.api.quantize` call (prepare, calibration, AdaRound, QDQ, "
    "checks, save).",
]


def composition(results: list[tuple[Case, list[dict]]]) -> list[str]:
    """Bias correction after AdaRound, against AdaRound alone: the numbers behind the default."""
    lines = [
        "## AdaRound and bias correction",
        "",
        "| model | AdaRound SQNR dB | AdaRound + BC SQNR dB | change | AdaRound agreement | + BC agreement |",
        "|---|---|---|---|---|---|",
    ]
    changes = []
    for case, rows in results:
        by = {r["row"]: r for r in rows}
        if "AdaRound + BC" not in by:
            continue
        a, ab = by["AdaRound"], by["AdaRound + BC"]
        changes.append(ab["sqnr_db"] - a["sqnr_db"])
        lines.append(
            f"| {case.name} | {_db(a['sqnr_db'])} | {_db(ab['sqnr_db'])} | {changes[-1]:+.2f} | "
            f"{_pct(a['agreement'])} | {_pct(ab['agreement'])} |"
        )
    if changes:
        worse = sum(c < 0 for c in changes)
        lines += [
            "",
            f"Bias correction after AdaRound lowered the logit SQNR on {worse} of {len(changes)} models (median "
            f"change {statistics.median(changes):+.2f} dB). AdaRound's sequential objective already fits each "
            "layer's output, mean included, to the float model's; bias correction then re-centres it on the "
            "float layer applied to the *quantized* input, which undoes part of that fit.",
        ]
    return lines


def sweep_table(results: list[tuple[Case, list[dict]]]) -> list[str]:
    """Learning rate, iterations and BLAS threads against the defaults, per model that was swept."""
    lines = [
        "## Choosing the defaults",
        "",
        "| model | variant | logit SQNR dB | top-1 agreement | MSE ratio | AdaRound s | load before/after |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, rows in results:
        swept = [r for r in rows if r["row"] == REPEATED or r["row"] in {name for name, _ in SWEEP_ROWS}]
        if len(swept) < 2:
            continue
        for r in swept:
            label = "default" if r["row"] == REPEATED else r["row"].removeprefix("AdaRound, ")
            lines.append(
                f"| {case.name} | {label} | {_db(r['sqnr_db'])} | {_pct(r['agreement'])} | "
                f"{r['adaround']['mse_ratio']} | {_spread(r['adaround_s'])} | {_load(r.get('load'))} |"
            )
    return lines


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def target_table(results: list[tuple[Case, list[dict]]]) -> list[str]:
    """The issue's four targets, each with what was measured."""
    by_case = {case.name: {r["row"]: r for r in rows} for case, rows in results}
    lines = ["| target | measured | status |", "|---|---|---|"]
    for name in ("resnet_digits", "mobilenetv2_digits"):
        if name not in by_case:
            continue
        by = by_case[name]
        parts, oks = [], []
        for suffix, label in (("", "per-channel"), (", per-tensor", "per-tensor")):
            ref, rtn, ada = by["float"], by.get("RTN" + suffix), by.get("AdaRound" + suffix)
            if rtn is None or ada is None:
                continue
            lost = ref["accuracy"] - rtn["accuracy"]
            parts.append(
                f"{label}: float {_pct(ref['accuracy'])}, RTN {_pct(rtn['accuracy'])}, AdaRound "
                f"{_pct(ada['accuracy'])}, gap closed {_closed(ada['accuracy'], rtn['accuracy'], ref['accuracy'])}"
            )
            oks.append(None if lost <= 0 else (ada["accuracy"] - rtn["accuracy"]) >= 0.5 * lost)
        status = _status(all(o for o in oks if o is not None) if any(o is not None for o in oks) else None)
        lines.append(f"| AdaRound closes >= 50% of the W4A8 RTN accuracy gap, {name} | {'; '.join(parts)} | {status} |")
    sq = by_case.get("squeezenet1.1")
    if sq:
        gain = sq["AdaRound"]["sqnr_db"] - sq["RTN"]["sqnr_db"]
        lines.append(
            f"| squeezenet1.1 logit SQNR +3 dB or more | {_db(sq['RTN']['sqnr_db'])} -> "
            f"{_db(sq['AdaRound']['sqnr_db'])} dB ({gain:+.2f} dB) | {_status(gain >= 3)} |"
        )
    worse = {
        name: [n for n, x in by["AdaRound"]["adaround"]["per_layer"].items() if x["mse_adaround"] >= x["mse_nearest"]]
        for name, by in by_case.items()
    }
    counts = "; ".join(
        f"{name} {len(by_case[name]['AdaRound']['adaround']['per_layer']) - len(w)}/"
        f"{len(by_case[name]['AdaRound']['adaround']['per_layer'])}"
        for name, w in worse.items()
    )
    lines.append(
        f"| reconstruction MSE lower than RTN on every layer (raw AdaRound result, before never_worse) | "
        f"layers lower: {counts} | {_status(not any(worse.values()))} |"
    )
    if sq:
        times = sq["AdaRound"]["quantize_s"]
        lines.append(
            f"| whole squeezenet1.1 quantization with AdaRound at the defaults <= 10 min on this 2-core machine | "
            f"{_spread(times)} s over {len(times)} runs (load average {_load(sq['AdaRound']['load'])}) | "
            f"{_status(max(times) <= 600)} |"
        )
    return lines


def write_report(path: Path, results, argv: list[str], repeats: int, seconds: float) -> None:
    cfg = AdaRoundConfig()
    env = collect_environment()
    lines = [
        "# AdaRound vs round-to-nearest at W4A8",
        "",
        "Written by `bench/adaround.py`. Command (from the repository root):",
        "",
        f"    {shlex.join(['python', *argv])}",
        "",
        f"Repeats of the default AdaRound row: {repeats}; whole run {seconds:.0f} s.",
        "",
        "## Machine",
        "",
        describe_environment(env),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items()) + ".",
        "",
        "## Settings",
        "",
        "int4 symmetric per-channel weights (per-tensor where said), uint8 asymmetric activations, minmax "
        f"calibration, target ort. AdaRound defaults: iterations {cfg.iterations}, samples per iteration "
        f"{cfg.samples_per_iteration}, lambda {cfg.reg_lambda}, beta {cfg.beta_range[0]:g} -> "
        f"{cfg.beta_range[1]:g} (cosine) after a {100 * cfg.warm_start:.0f}% warm start, Adam lr "
        f"{cfg.learning_rate}, input {cfg.input!r} (sequential), cache {cfg.cache_mb:g} MB per layer, seed "
        f"{cfg.seed}, never_worse {cfg.never_worse}, BLAS threads {cfg.blas_threads}.",
        "",
        "## Targets",
        "",
        *target_table(results),
        "",
        *targets(results),
        "",
        *composition(results),
        "",
        *sweep_table(results),
        "",
        *NOTES,
        "",
        "## Results",
        "",
    ]
    for case, rows in results:
        lines += summary_table(case, rows) + [""]
    lines += ["## Per layer", ""]
    for case, rows in results:
        lines += layer_table(case, rows) + [""]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


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
        write_report(args.out, results, saved["argv"], saved["repeats"], saved["seconds"])
        print(f"wrote {args.out}")
        return 0
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-adaround-") as tmp:
        for case in cases(set(args.models.split(",")), set(args.sweep_models.split(",")) - {""}):
            print(f"{case.name}:", flush=True)
            results.append((case, run_case(case, args.repeats, Path(tmp))))
    seconds = time.time() - started
    write_report(args.out, results, argv, args.repeats, seconds)
    if args.save_json:
        saved = {"argv": argv, "repeats": args.repeats, "seconds": seconds}
        saved["cases"] = {case.name: rows for case, rows in results}
        args.save_json.write_text(json.dumps(saved, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
