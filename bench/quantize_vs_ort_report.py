"""Markdown for bench/quantize_vs_ort.py: setup, cost, fidelity, latency, targets, and the spread over runs.

Each run's key numbers are appended to ``<out>.runs.json`` (next to the Markdown), and the last table
shows them for every stored run. Everything below a line ``<!-- analysis -->`` in an existing Markdown
file is hand-written analysis and is kept when the file is rewritten.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

ANALYSIS_MARK = "<!-- analysis -->"
MIB = 2**20
# Targets of issue 3
ENTROPY_SPEEDUP = 5.0
ENTROPY_RSS_RATIO = 0.3
MINMAX_SPEEDUP = 1.5
SQNR_SLACK_DB = 0.5
ISLANDS = "onnxq-islands"
SYMMETRIC = "onnxq-int8-sym"
PREPARED = "float, onnxq prepare only"


def write(run: dict[str, Any], out: Path) -> None:
    """Write the Markdown for ``run`` to ``out`` (atomically), keeping the analysis section."""
    history_path = out.with_suffix(".runs.json")
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    history.append(key_numbers(run))
    _atomic_write(history_path, json.dumps(history, indent=1) + "\n")
    analysis = ""
    if out.exists() and ANALYSIS_MARK in out.read_text():
        analysis = out.read_text().split(ANALYSIS_MARK, 1)[1]
    text = render(run, history) + "\n" + ANALYSIS_MARK + (analysis or "\n")
    _atomic_write(out, text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def render(run: dict[str, Any], history: list[dict[str, Any]]) -> str:
    from onnxq.report.environment import collect_environment, describe_environment

    env = collect_environment()
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    lines = [
        "# onnxq quantize vs onnxruntime.quantization.quantize_static",
        "",
        f"Command (from the repository root): `{run['command']}`; took {run['took_s']:.0f} s, "
        f"finished {run['started']} UTC.",
        "",
        f"Machine: {describe_environment(env)}; {(env.get('memory_total_bytes') or 0) / 2**30:.0f} GiB RAM.",
        f"Versions: {versions}.",
        "",
        "Both tools: QDQ format, per-channel int8 symmetric weights, uint8 asymmetric activations, the same",
        "calibration samples, fed one sample per run. ORT: `quantize_static(QuantFormat.QDQ, per_channel=True,",
        "activation_type=QUInt8, weight_type=QInt8, calibrate_method=...)`, ORT's defaults otherwise",
        "(percentile 99.999, which onnxq is given too). Each quantization runs in a child process of its own:",
        "wall time is the child's, interpreter start-up and imports included; peak RSS is the child's VmHWM.",
        f"`{ISLANDS}`: onnxq with `--avoid-float-boundaries` (the Conv/GlobalAveragePool nodes that border an op "
        "left in float stay float)",
        "(`--exclude-nodes`, computed by the script from onnxq's default output; only where there are some).",
        f"`{SYMMETRIC}`: onnxq with symmetric int8 activations (`--activation-type int8 --symmetric-activations`,",
        "the TensorRT-style recipe) on the ORT target. Both variants are quantized with the first method only.",
        "`float, onnxq prepare only`: the float model after onnxq's prepare pass alone (BatchNorm folding,",
        "HardSwish fusion, opset upgrade), timed beside the others to separate what int8 gives from what the",
        "float graph rewrites give.",
        "",
    ]
    lines += _setup_table(run["rows"])
    lines += _cost_table(run["rows"])
    lines += _fidelity_table(run["rows"])
    lines += _latency_table(run["rows"])
    lines += _targets_table(run["rows"])
    lines += _history_table(history)
    return "\n".join(lines) + "\n"


# --- helpers -----------------------------------------------------------------------------------


def _f(value: float | None, fmt: str = ".2f", none: str = "-") -> str:
    return none if value is None else format(value, fmt)


def _rng(res: dict[str, Any], key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
    """'median' or 'median (min-max)' when repeated."""
    value = res[key] / scale
    lo, hi = res.get(key + "_range", (res[key], res[key]))
    if lo == hi:
        return format(value, fmt)
    return f"{format(value, fmt)} ({format(lo / scale, fmt)}–{format(hi / scale, fmt)})"


def _ok(res: dict[str, Any] | None) -> bool:
    return bool(res and res.get("ok") and res.get("loads") == "loads")


def _setup_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Models and data",
        "",
        "| model | opset | calibration samples | held-out samples | ORT on the original opset "
        "(per_channel=True, minmax) | ORT quant_pre_process |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        orig = r.get("ort_original_opset")
        if orig is None:
            orig_txt = "n/a (opset >= 13)"
        elif not orig.get("ok"):
            orig_txt = f"quantize_static fails: {orig.get('error', '')}"
        else:
            orig_txt = (
                f"writes an opset-{orig.get('opset')} model with {orig.get('per_channel_dq')} per-channel "
                f"DequantizeLinear; {orig.get('loads')}"
            )
        pre = r.get("ort_pre_process", "not needed")
        out.append(f"| {r['model']} | {r['opset']} | {r['calib_samples']} | {r['eval_samples']} | {orig_txt} | {pre} |")
    out += ["", "ORT is given models below opset 13 upgraded with `onnx.version_converter` (the manual step).", ""]
    return out


def _cost_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Quantization cost (child process: wall time and peak RSS)",
        "",
        "| model | method | onnxq wall s | ORT wall s | ORT / onnxq time | onnxq peak RSS MiB | ORT peak RSS MiB "
        "| onnxq / ORT RSS | onnxq quantize() s | ORT quantize_static() s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for method, e in r["methods"].items():
            q, o = e["onnxq"], e["ort"]
            if not (q.get("ok") and o.get("ok")):
                out.append(f"| {r['model']} | {method} | {_err(q)} | {_err(o)} | - | - | - | - | - | - |")
                continue
            out.append(
                f"| {r['model']} | {method} | {_rng(q, 'wall_s')} | {_rng(o, 'wall_s')} | "
                f"{o['wall_s'] / q['wall_s']:.2f}x | {_rng(q, 'peak_rss_bytes', MIB, '.0f')} | "
                f"{_rng(o, 'peak_rss_bytes', MIB, '.0f')} | {q['peak_rss_bytes'] / o['peak_rss_bytes']:.2f} | "
                f"{_rng(q, 'quantize_s')} | {_rng(o, 'quantize_s')} |"
            )
    return out + [""]


def _err(res: dict[str, Any]) -> str:
    return "ok" if res.get("ok") else "failed: " + str(res.get("error", ""))[:120].replace("|", "/")


def _fidelity_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Fidelity to the float model on held-out inputs",
        "",
        "SQNR: 10 log10(sum ref^2 / sum (q - ref)^2) over the whole held-out set, on the model's output "
        "(logits for the sample models, softmax probabilities for squeezenet1.1 and ppocr). "
        "Top-1 agreement: argmax equal to the float model's. Accuracy: against labels (sample models only).",
        "",
        "| model | method | tool | top-1 agreement | SQNR dB | SQNR - ORT's dB | accuracy (float) "
        "| per-channel DequantizeLinear (weights, biases) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for method, e in r["methods"].items():
            ort_sqnr = (e["ort"].get("fidelity") or {}).get("sqnr_db") if _ok(e["ort"]) else None
            for tool, res in e.items():
                if not _ok(res):
                    out.append(f"| {r['model']} | {method} | {tool} | {_err(res)} {res.get('loads', '')} | | | | |")
                    continue
                fid = res["fidelity"]
                delta = "" if tool == "ort" or ort_sqnr is None else f"{fid['sqnr_db'] - ort_sqnr:+.2f}"
                acc = "-" if fid["accuracy"] is None else f"{fid['accuracy']:.2%} ({r['float_accuracy']:.2%})"
                out.append(
                    f"| {r['model']} | {method} | {tool} | {fid['agreement']:.2%} | {_f(fid['sqnr_db'])} | "
                    f"{delta} | {acc} | {res.get('per_channel_dq', '-')} |"
                )
    return out + [""]


def _latency_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## CPU latency, 2 intra-op threads, batch 1 (all models of a row group interleaved in one loop)",
        "",
        "p50 in ms: median over the repeated measurements, (min–max) of the p50s; each measurement is "
        "`onnxq.measure.bench.bench_models` with the float model and every quantized model of that model interleaved "
        "round-robin (thread spinning off). Speedup > 1 is faster than the float model; every method writes "
        "the same graph (only scales differ), so the minmax models stand for all.",
        "",
        "| model | quantized by | p50 ms | speedup vs float | latency / ORT's quantized | max CV |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r.get("latency")
        if not lat:
            out.append(f"| {r['model']} | no latency: ORT's or onnxq's model does not load | | | | |")
            continue
        med = {k: statistics.median(v) for k, v in lat.items() if isinstance(v, list)}
        for key in med:
            vs_ort = "-" if key.startswith("float") else f"{med[key] / med['ort']:.2f}"
            out.append(
                f"| {r['model']} | {'(float model)' if key == 'float' else key} | {_p50(lat, key)} | "
                f"{med['float'] / med[key]:.2f}x | {vs_ort} | {lat[key + '_cv']:.2f} |"
            )
    return out + [""]


def _p50(lat: dict[str, Any], key: str) -> str:
    values = lat[key]
    med = statistics.median(values)
    fmt = ".4f" if med < 0.1 else ".3f"
    return f"{med:{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


# --- targets -----------------------------------------------------------------------------------


def _targets_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Targets",
        "",
        "| model | target | measured | met |",
        "|---|---|---|---|",
    ]
    for r in rows:
        for target, measured, met in target_checks(r):
            out.append(f"| {r['model']} | {target} | {measured} | {met} |")
    return out + ["", "Where a target is missed, the analysis below says what stands in the way.", ""]


def target_checks(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, 'yes'/'NO'/'n/a') for one model row."""
    checks = []
    m = r["methods"]
    if "entropy" in m and m["entropy"]["onnxq"].get("ok") and m["entropy"]["ort"].get("ok"):
        q, o = m["entropy"]["onnxq"], m["entropy"]["ort"]
        speed = o["wall_s"] / q["wall_s"]
        rss = q["peak_rss_bytes"] / o["peak_rss_bytes"]
        checks.append((f"entropy >= {ENTROPY_SPEEDUP:g}x faster", f"{speed:.2f}x", _yes(speed >= ENTROPY_SPEEDUP)))
        checks.append((f"entropy RSS <= {ENTROPY_RSS_RATIO}x ORT's", f"{rss:.2f}x", _yes(rss <= ENTROPY_RSS_RATIO)))
    if "minmax" in m and m["minmax"]["onnxq"].get("ok") and m["minmax"]["ort"].get("ok"):
        speed = m["minmax"]["ort"]["wall_s"] / m["minmax"]["onnxq"]["wall_s"]
        checks.append((f"minmax >= {MINMAX_SPEEDUP:g}x faster", f"{speed:.2f}x", _yes(speed >= MINMAX_SPEEDUP)))
    for method, e in m.items():
        if _ok(e["onnxq"]) and _ok(e["ort"]):
            d = e["onnxq"]["fidelity"]["sqnr_db"] - e["ort"]["fidelity"]["sqnr_db"]
            checks.append((f"{method}: SQNR >= ORT's - {SQNR_SLACK_DB} dB", f"{d:+.2f} dB", _yes(d >= -SQNR_SLACK_DB)))
        elif _ok(e["onnxq"]):
            checks.append((f"{method}: SQNR >= ORT's - {SQNR_SLACK_DB} dB", "ORT's model unusable", "yes"))
    lat = r.get("latency")
    if lat:
        med = {k: statistics.median(v) for k, v in lat.items() if isinstance(v, list)}
        checks.append(
            ("latency <= 1.0x ORT's quantized", f"{med['onnxq'] / med['ort']:.2f}x", _yes(med["onnxq"] <= med["ort"]))
        )
        checks.append(("latency <= float's", f"{med['onnxq'] / med['float']:.2f}x", _yes(med["onnxq"] <= med["float"])))
        if PREPARED in med:
            ratio = med["onnxq"] / med[PREPARED]
            checks.append(("(int8 pays off) latency < float's after onnxq prepare", f"{ratio:.2f}x", _yes(ratio < 1.0)))
        if ISLANDS in med:
            ratio = med[ISLANDS] / med["float"]
            checks.append((f"latency <= float's ({ISLANDS})", f"{ratio:.2f}x", _yes(ratio <= 1.0)))
            checks.append(
                (
                    f"latency <= 1.0x ORT's ({ISLANDS})",
                    f"{med[ISLANDS] / med['ort']:.2f}x",
                    _yes(med[ISLANDS] <= med["ort"]),
                )
            )
    return checks


def _yes(ok: bool) -> str:
    return "yes" if ok else "**NO**"


# --- runs --------------------------------------------------------------------------------------


def key_numbers(run: dict[str, Any]) -> dict[str, Any]:
    """The numbers whose spread between runs matters: time and RSS ratios, SQNR deltas, latency ratios."""
    out: dict[str, Any] = {"started": run["started"], "command": run["command"], "models": {}}
    for r in run["rows"]:
        k: dict[str, Any] = {}
        for method, e in r["methods"].items():
            q, o = e["onnxq"], e["ort"]
            if q.get("ok") and o.get("ok"):
                k[f"{method} time ORT/onnxq"] = round(o["wall_s"] / q["wall_s"], 3)
                k[f"{method} RSS onnxq/ORT"] = round(q["peak_rss_bytes"] / o["peak_rss_bytes"], 3)
            if _ok(q) and _ok(o):
                k[f"{method} SQNR delta dB"] = round(q["fidelity"]["sqnr_db"] - o["fidelity"]["sqnr_db"], 3)
        lat = r.get("latency")
        if lat:
            med = {key: statistics.median(v) for key, v in lat.items() if isinstance(v, list)}
            k["latency onnxq/float"] = round(med["onnxq"] / med["float"], 3)
            k["latency onnxq/ORT"] = round(med["onnxq"] / med["ort"], 3)
            for variant in (ISLANDS, SYMMETRIC, PREPARED):
                if variant in med:
                    k[f"latency {variant}/float"] = round(med[variant] / med["float"], 3)
        out["models"][r["model"]] = k
    return out


def _history_table(history: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Spread over runs of the script",
        "",
        f"Key ratios of each stored run ({len(history)} run(s), oldest first; from the .runs.json beside this file).",
        "",
        "| model | quantity | " + " | ".join(h["started"] for h in history) + " | spread (max-min) |",
        "|---|---|" + "---|" * len(history) + "---|",
    ]
    models = list(dict.fromkeys(m for h in history for m in h["models"]))
    for model in models:
        keys = list(dict.fromkeys(k for h in history for k in h["models"].get(model, {})))
        for key in keys:
            values = [h["models"].get(model, {}).get(key) for h in history]
            present = [v for v in values if v is not None]
            spread = f"{max(present) - min(present):.3f}" if len(present) > 1 else "-"
            cells = " | ".join("-" if v is None else f"{v:.3f}" for v in values)
            out.append(f"| {model} | {key} | {cells} | {spread} |")
    return out + [""]
