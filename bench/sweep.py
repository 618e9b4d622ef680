"""``onnxq sweep`` three ways: serially, on the local process pool and on local Ray, cell for cell.

The four sample models, squeezenet1.1 and ppocr_mobile_v2_cls (with the calibration and held-out sets of
bench/datasets.py, saved as .npz in the work folder) x 7 recipes (minmax, per-tensor, percentile, entropy, mse,
per-tensor CLE + bias correction, uint16 activations), each with its float baseline, on the CPU EP at batch 1.
Each executor runs the same spec into a fresh OUT, as ``onnxq sweep`` in a child process, timed by the wall
clock (Ray's includes starting the local instance). Then:

* fidelity: top-1, agreement, SQNR, cosine and size must be identical in every cell, and so must the
  quantized models' bytes;
* latency: each cell's p50 against the serial run's; "within spread" when the two p50s differ by no more
  than the wider of the two runs' p50-to-p90 bands;
* the cache: the serial OUT is swept again with one recipe changed, and the tasks it ran are counted;
* a lost worker: a Ray sweep into a fresh OUT whose worker running a benchmark is killed (SIGKILL) once one
  benchmark result is stored; the sweep must finish with every cell, only that task run twice, the results
  stored before the kill untouched and the fidelity still the serial run's.

Usage, from the repository root (the machine should be quiet for the timings)::

    python bench/sweep.py [--tiny] [--runs N] [--jobs 2] [--only serial,pool,ray] [--work DIR]
                          [--out bench/results/sweep.md]

``--tiny`` (2 sample models x 2 recipes, 20 runs) is for trying the script, not for the results file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "minmax": {},
    "per-tensor": {"per_channel": False},
    "percentile": {"method": "percentile"},
    "entropy": {"method": "entropy"},
    "mse": {"method": "mse"},
    "cle-bc": {"per_channel": False, "passes": ["cle", "bias-correction"], "bias_correction": {"inputs": "float"}},
    "a16w8": {"activation_type": "uint16"},
}
CHANGED = ("per-tensor", {"per_channel": False, "method": "percentile"})  # the rerun's one changed recipe
EXECUTORS = {"serial": ["--jobs", "1"], "pool": ["--jobs", "{jobs}"], "ray": ["--ray", "--jobs", "{jobs}"]}


def write_data(work: Path, tiny: bool) -> list[dict[str, Any]]:
    """The spec's models with their data files (the real models' sets saved as .npz in ``work``)."""
    sample = ["mlp_digits", "resnet_digits"] if tiny else ["mlp_digits", "mobilenetv2_digits", "resnet_digits",
                                                            "transformer_digits"]  # fmt: skip
    models = [{"path": str(datasets.SAMPLE_MODELS / f"{m}.onnx"), "calib": str(datasets.SAMPLE_MODELS / "calib.npz"),
               "data": str(datasets.SAMPLE_MODELS / "test.npz")} for m in sample]  # fmt: skip
    real = [] if tiny else [("squeezenet1.1", datasets.SQUEEZENET_DIR, datasets.squeezenet_sets),
                            ("ppocr_mobile_v2_cls", datasets.PPOCR_DIR, datasets.ppocr_sets)]  # fmt: skip
    for name, folder, make_sets in real:
        if not (folder / "model.onnx").is_file():
            print(f"{name}: not found in {folder}, left out")
            continue
        calib, held_out = make_sets()
        np.savez(work / f"{name}.calib.npz", **calib)
        np.savez(work / f"{name}.eval.npz", **held_out)
        models.append({"path": str(folder / "model.onnx"), "calib": str(work / f"{name}.calib.npz"),
                       "data": str(work / f"{name}.eval.npz")})  # fmt: skip
    return models


def write_spec(path: Path, models: list[dict[str, Any]], recipes: dict[str, Any], runs: int) -> Path:
    spec = {"models": models, "recipes": recipes, "eps": ["cpu"], "batches": [1],
            "bench": {"runs": runs, "warmup": max(1, runs // 10)},
            "target": {"min_agreement": 0.98, "optimize": "latency"}}  # fmt: skip
    path.write_text(json.dumps(spec, indent=1))
    return path


def run_executor(spec: Path, out: Path, flags: list[str]) -> dict[str, Any]:
    """``onnxq sweep`` in a child process; its wall time, exit code and report."""
    cmd = [sys.executable, "-m", "onnxq", "sweep", str(spec), "--out", str(out), "--no-progress", *flags]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, "rc": proc.returncode, "report": json.loads((out / "sweep.json").read_text())}


def _key(r: dict[str, Any]) -> tuple:
    return r["model"], r["recipe"], r["ep"], r["batch"]


def compare(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Cell for cell: fidelity and model bytes identical; p50 ratio and whether it is within the spread."""
    fields = ("top1", "agreement", "sqnr_db", "cosine", "size_bytes", "status")
    rows = {_key(r): r for r in other["results"]}
    same = [all(r[f] == rows[_key(r)][f] for f in fields) for r in base["results"]]
    hashes = [{(c["model"], c["recipe"]): (c["quantize"] or {}).get("model_sha256") for c in rep["cells"]}
              for rep in (base, other)]  # fmt: skip
    ratios, within, outside = [], [], []
    for r in base["results"]:
        o = rows[_key(r)]
        if r["p50_ms"] and o["p50_ms"]:
            ratios.append(o["p50_ms"] / r["p50_ms"])
            band = max(r["p90_ms"] - r["p50_ms"], o["p90_ms"] - o["p50_ms"])
            within.append(abs(o["p50_ms"] - r["p50_ms"]) <= band)
            if not within[-1]:
                outside.append(f"{r['model']}/{r['recipe']} {r['p50_ms'] * 1e3:.1f} vs {o['p50_ms'] * 1e3:.1f} us")
    return {"cells": len(same), "fidelity_identical": sum(same), "models_identical": hashes[0] == hashes[1],
            "p50_ratio": ratios, "within_spread": sum(within), "timed": len(within), "outside": outside}  # fmt: skip


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})" if values else "-"


def render(run: dict[str, Any]) -> str:
    from onnxq.report.environment import collect_environment, describe_environment

    env, serial = collect_environment(), run["executors"]["serial"]["report"]
    s = serial["summary"]
    lines = ["# `onnxq sweep`: serial, local process pool and local Ray, cell for cell", "",
             f"- machine: {describe_environment(env)}; {(env.get('memory_total_bytes') or 0) / 2**30:.0f} GiB RAM",
             f"- versions: {json.dumps(env.get('versions'))}; ray {run['ray_version']}",
             f"- command: `{run['command']}` ({run['took_s']:.0f} s, started {run['started']} UTC)",
             f"- sweep: {len(serial['spec']['models'])} models x {len(serial['spec']['recipes'])} recipes (+ float), "
             f"CPU EP, batch 1, {serial['spec']['bench']['runs']} timed runs per benchmark; {s['cells']} cells, "
             f"{s['tasks']} tasks", "", "## Wall time and agreement with the serial run", "",
             "| executor | wall s | vs serial | cells failed | fidelity identical | models identical | "
             "p50 / serial p50 | p50 within spread |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, ex in run["executors"].items():
        c = ex.get("compare")
        agree = (
            f"{c['fidelity_identical']}/{c['cells']} | {'yes' if c['models_identical'] else 'NO'} | "
            f"{_median_range(c['p50_ratio'])} | {c['within_spread']}/{c['timed']}"
            if c
            else "- | - | - | -"
        )
        lines.append(f"| {name} | {ex['wall_s']:.1f} | {serial_wall(run) / ex['wall_s']:.2f}x | "
                     f"{ex['report']['summary']['failed']} | {agree} |")  # fmt: skip
    for name, ex in run["executors"].items():
        if ex.get("compare", {}).get("outside"):
            lines.append(f"\n{name}: p50 outside the spread (serial vs {name}): {'; '.join(ex['compare']['outside'])}.")
    lines += ["", *rerun_lines(run), "", *kill_lines(run), "", "## Results of the serial run", ""]
    from onnxq.sweep.render import render_sweep_markdown

    body = render_sweep_markdown(serial).split("\n", 3)[3]  # without its title and meta line
    return "\n".join(lines) + "\n" + body.replace("\n## ", "\n### ")


def serial_wall(run: dict[str, Any]) -> float:
    return run["executors"]["serial"]["wall_s"]


def rerun_lines(run: dict[str, Any]) -> list[str]:
    r = run.get("rerun")
    if r is None:
        return []
    s = r["report"]["summary"]
    return ["## A rerun with one recipe changed", "",
            f"The serial OUT swept again with recipe `{CHANGED[0]}` changed to `{json.dumps(CHANGED[1])}`: "
            f"{r['wall_s']:.1f} s; executed {json.dumps(s['executed'])}, {s['cached']} of {s['tasks']} tasks from "
            f"the cache; recomputed cells: {', '.join(sorted(r['recomputed']))}."]  # fmt: skip


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="2 sample models x 2 recipes, 20 runs: to try the script")
    p.add_argument("--runs", type=int, help="timed runs per benchmark (default 200; 20 with --tiny)")
    p.add_argument("--jobs", type=int, default=2, help="workers of the pool and CPUs of local Ray")
    p.add_argument("--only", default="serial,pool,ray", help="executors to run (serial is always run)")
    p.add_argument("--work", help="folder for the data, the spec and the OUTs (default: a temporary folder)")
    p.add_argument("--out", help="results file (default bench/results/sweep.md; with --tiny, the work folder)")
    args = p.parse_args(argv)
    t0, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    work = Path(args.work or tempfile.mkdtemp(prefix="onnxq-bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    recipes = dict(list(RECIPES.items())[:2]) if args.tiny else RECIPES
    models = write_data(work, args.tiny)
    runs = args.runs or (20 if args.tiny else 200)
    spec = write_spec(work / "spec.json", models, recipes, runs)
    chosen = ["serial", *(e for e in args.only.split(",") if e != "serial")]
    executors = {}
    for name in chosen:
        flags = [f.format(jobs=args.jobs) for f in EXECUTORS[name]]
        print(f"{name}: onnxq sweep {' '.join(flags)}", flush=True)
        executors[name] = run_executor(spec, work / f"out-{name}", flags)
        if name != "serial":
            executors[name]["compare"] = compare(executors["serial"]["report"], executors[name]["report"])
        print(f"  {executors[name]['wall_s']:.1f} s", flush=True)
    run = {"command": "python " + " ".join(shlex.quote(a) for a in ["bench/sweep.py", *argv]), "started": started,
           "executors": executors, "ray_version": _ray_version()}  # fmt: skip
    run["rerun"] = rerun_with_one_change(work, models, recipes, runs)
    if "ray" in chosen:
        print("ray, one worker killed: onnxq sweep --ray", flush=True)
        run["kill"] = ray_with_one_worker_killed(spec, work / "out-ray-killed", args.jobs, executors["serial"])
    run["took_s"] = time.perf_counter() - t0
    out = Path(args.out) if args.out else (work / "sweep.md" if args.tiny else ROOT / "bench" / "results" / "sweep.md")
    out.write_text(render(run))
    print(f"wrote {out}")
    return 0


def rerun_with_one_change(work: Path, models: list[dict[str, Any]], recipes: dict[str, Any], runs: int) -> dict:
    spec = write_spec(work / "spec-changed.json", models, {**recipes, CHANGED[0]: CHANGED[1]}, runs)
    result = run_executor(spec, work / "out-serial", EXECUTORS["serial"])
    cells = result["report"]["cells"]
    result["recomputed"] = {f"{c['model']}/{c['recipe']}" for c in cells if any(not t["cached"] for t in c["tasks"])}
    return result


def ray_with_one_worker_killed(spec: Path, out: Path, jobs: int, serial: dict[str, Any]) -> dict[str, Any]:
    """A Ray sweep whose worker running a benchmark is SIGKILLed once one benchmark is stored."""
    cmd = [sys.executable, "-m", "onnxq", "sweep", str(spec), "--out", str(out), "--no-progress", "--ray",
           "--jobs", str(jobs)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed, stored = None, {}
    while killed is None and proc.poll() is None:
        killed, stored = _kill_a_running_benchmark(out)
        time.sleep(0.05)
    _, err = proc.communicate()
    if proc.returncode not in (0, 3) or killed is None:
        raise SystemExit(f"the sweep with a killed worker: rc {proc.returncode}, killed {killed}:\n{err[-3000:]}")
    report = json.loads((out / "sweep.json").read_text())
    tasks = {t["id"]: t for c in report["cells"] for t in c["tasks"]}
    others_once = all(t["attempts"] == 1 or t["cached"] for i, t in tasks.items() if i != killed)
    untouched = all(p.read_bytes() == b for p, b in stored.items())
    return {"wall_s": time.perf_counter() - t0, "killed": killed, "report": report,
            "compare": compare(serial["report"], report), "killed_attempts": tasks[killed]["attempts"],
            "lost": tasks[killed]["lost"], "others_once": others_once, "stored_before": len(stored),
            "stored_untouched": untouched}  # fmt: skip


def _kill_a_running_benchmark(out: Path) -> tuple[str | None, dict[Path, bytes]]:
    if not any((out / "cache" / "bench").glob("*.json")):
        return None, {}
    for marker in (out / ".sweep" / "running").glob("*.json"):
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue  # it finished meanwhile
        if info["task"].startswith("bench "):
            stored = {p: p.read_bytes() for p in (out / "cache").rglob("*.json")}
            os.kill(info["pid"], signal.SIGKILL)
            return info["task"], stored
    return None, {}


def kill_lines(run: dict[str, Any]) -> list[str]:
    k = run.get("kill")
    if k is None:
        return []
    s, c = k["report"]["summary"], k["compare"]
    once = "once" if k["others_once"] else "MORE THAN ONCE"
    kept = "untouched" if k["stored_untouched"] else "CHANGED"
    return ["## A Ray worker killed mid-sweep", "",
            f"A Ray sweep into a fresh OUT; once a benchmark result was stored, the worker running `{k['killed']}` "
            f"was killed with SIGKILL. The sweep finished in {k['wall_s']:.1f} s: {s['cells']} cells, "
            f"{s['failed']} failed, {s['retried']} task retried; the killed task ran {k['killed_attempts']} times "
            f"(lost: {'; '.join(k['lost'])[:160]}), every other task {once} (or from the cache); "
            f"the {k['stored_before']} results stored before the kill {kept}; "
            f"fidelity identical to the serial run in {c['fidelity_identical']}/{c['cells']} cells, "
            f"quantized models {'identical' if c['models_identical'] else 'DIFFERENT'}."]  # fmt: skip


def _ray_version() -> str | None:
    try:
        import ray
    except ImportError:
        return None
    return ray.__version__


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
