"""Does the README's first command prove something? Its printed INT8 speedup over repeated runs, and the demo
model's float-vs-INT8 latency at several batch sizes.

Two measurements, both of ``sample_models/resnet_wide_digits.onnx`` and the QDQ model onnxq makes of it:

* the README's ``onnxq run`` command, read from README.md's first code block (so this script measures what
  the README says), run ``--repeats`` times, each in a fresh process as a user would; the speedup, p50s and
  coefficients of variation come from each run's JSON report, with the 1-minute load average before it;
* ``onnxq bench FLOAT INT8 --batch B --duration S`` (the two models interleaved in one process, order
  balanced) at each ``--batch``, ``--bench-repeats`` times.

It reports every run, the median and the range (and the range as +/- % of the median), and writes
``bench/results/demo.md``. With ``--screenshot PNG`` it also renders the HTML report of one more run in a
headless Chromium (tests/browser.py) and saves the top of the page, at most ``--max-png-kib``. Usage::

    python bench/demo.py [--repeats 6] [--batch 1 --batch 8 --batch 32] [--bench-repeats 3] [--duration 3]
                         [--run-arg=--duration --run-arg=10] [--screenshot bench/results/report.png] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from onnxq.report.environment import collect_environment, describe_environment  # noqa: E402

SCREEN_WIDTH = 1280
# The `onnxq` script of this interpreter's environment (so reports record `onnxq run ...`), else the same entry.
SCRIPT = Path(sys.executable).with_name("onnxq")
ONNXQ = (
    [str(SCRIPT)]
    if SCRIPT.is_file()
    else [sys.executable, "-c", "import sys; from onnxq.cli import main; sys.exit(main())"]
)


def readme_run_argv() -> list[str]:
    """The ``onnxq run ...`` part of README.md's first code block, split as the shell would."""
    block = re.search(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    if block is None:
        raise SystemExit("README.md has no bash block")
    command = next((part.strip() for part in block.group(1).split("&&") if part.strip().startswith("onnxq run")), None)
    if command is None:
        raise SystemExit("README.md's first bash block has no `onnxq run` command")
    return shlex.split(command)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def redirected(argv: list[str], folder: Path, report: str) -> list[str]:
    """The README's argv with its -o and --report moved into ``folder`` (the report as ``report``)."""
    out = list(argv)
    out[out.index("-o") + 1] = str(folder / Path(option(argv, "-o")).name)
    out[out.index("--report") + 1] = str(folder / report)
    return out


def run_readme_command(argv: list[str], extra: list[str]) -> dict:
    """One fresh-process run of the README's command; the numbers its JSON report holds."""
    with tempfile.TemporaryDirectory(prefix="onnxq-demo-") as tmp:
        cmd = [*ONNXQ, *redirected(argv, Path(tmp), "report.json")[1:], *extra]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        bench = json.loads((Path(tmp) / "report.json").read_text())["bench"]
    return {"seconds": seconds, **pair_row(bench[0], bench[1], load)}


def pair_row(flt: dict, q: dict, load: float) -> dict:
    """One table row from the float and INT8 bench entries of one group (same EP and batch)."""
    return {
        "batch": q["batch"],
        "load": load,
        "speedup": q["speedup_vs_first"],
        "float_p50": flt["latency_ms"]["p50"],
        "int8_p50": q["latency_ms"]["p50"],
        "float_cv": flt["cv"],
        "int8_cv": q["cv"],
        "runs": q["runs"],
    }


def bench_batches(model: Path, qmodel: Path, batches: list[int], duration: float) -> list[dict]:
    """One ``onnxq bench`` of float and INT8 at every batch; an entry per (batch, model pair)."""
    cmd = [*ONNXQ, "bench", str(model), str(qmodel), "--duration", str(duration), "--json"]
    for b in batches:
        cmd += ["--batch", str(b)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    entries = json.loads(done.stdout)
    entries = entries if isinstance(entries, list) else entries["bench"]
    return [pair_row(*[e for e in entries if e["batch"] == b], load) for b in batches]


def spread(values: list[float]) -> str:
    """'2.41x (2.11-2.53, -12%/+5% of the median)'."""
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return f"{med:.2f}x ({lo:.2f}-{hi:.2f}, {100 * (lo / med - 1):+.0f}%/{100 * (hi / med - 1):+.0f}% of the median)"


def run_table(rows: list[dict], first: str) -> list[str]:
    out = [
        f"| {first} | load (1 min) | float p50 ms | INT8 p50 ms | speedup | float cv | INT8 cv | timed runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        label = str(r["batch"]) if first == "batch" else str(i)
        out.append(
            f"| {label} | {r['load']:.1f} | {r['float_p50']:.3f} | {r['int8_p50']:.3f} | {r['speedup']:.2f}x "
            f"| {r['float_cv']:.2f} | {r['int8_cv']:.2f} | {r['runs']} |"
        )
    return out


def screenshot(argv: list[str], extra: list[str], png: Path, max_kib: int) -> str:
    """Render one run's HTML report in a headless browser; save the top of the page within ``max_kib``."""
    from browser import find_browser, open_page, png_size

    executable = find_browser()
    if executable is None:
        raise SystemExit("--screenshot needs Chromium (apt-get install chromium) or $ONNXQ_BROWSER")
    with tempfile.TemporaryDirectory(prefix="onnxq-demo-") as tmp:
        cmd = [*ONNXQ, *redirected(argv, Path(tmp), "report.html")[1:], *extra]
        subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
        for height in (4000, 3200, 2600, 2100, 1700):
            page = open_page(Path(tmp) / "report.html", executable, width=SCREEN_WIDTH, max_height=height)
            if len(page.png) <= max_kib * 1024:
                break
    if page.console_errors or page.log_errors:
        raise SystemExit(f"the report has browser errors: {page.console_errors + page.log_errors}")
    png = png.resolve()
    png.write_bytes(page.png)
    w, h = png_size(page.png)
    return f"`{png.relative_to(ROOT)}`: {w}x{h} px, {len(page.png) / 1024:.0f} KiB, {page.version}, no console errors"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=6, help="runs of the README command")
    ap.add_argument("--batch", type=int, action="append", help="batches for onnxq bench (default 1, 8, 32)")
    ap.add_argument("--bench-repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of timed rounds per onnxq bench batch")
    ap.add_argument("--run-arg", action="append", default=[], help="extra argument for the README command")
    ap.add_argument("--screenshot", type=Path, help="also save a screenshot of the HTML report here")
    ap.add_argument("--max-png-kib", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo.md")
    args = ap.parse_args()
    argv, batches = readme_run_argv(), args.batch or [1, 8, 32]
    runs = []
    for i in range(args.repeats):
        runs.append(run_readme_command(argv, args.run_arg))
        print(f"README command, run {i + 1}: {runs[-1]['speedup']:.2f}x", flush=True)
    with tempfile.TemporaryDirectory(prefix="onnxq-demo-") as tmp:
        model, qmodel = ROOT / argv[2], Path(tmp) / "q.onnx"
        subprocess.run(
            [
                *ONNXQ,
                "quantize",
                str(model),
                "-o",
                str(qmodel),
                "--calib",
                str(ROOT / option(argv, "--calib")),
                "--no-progress",
            ],
            check=True,
            capture_output=True,
        )
        sweeps = [bench_batches(model, qmodel, batches, args.duration) for _ in range(args.bench_repeats)]
    shot = screenshot(argv, args.run_arg, args.screenshot, args.max_png_kib) if args.screenshot else None
    args.out.write_text(render(argv, args, runs, sweeps, shot))
    print(f"wrote {args.out}")
    return 0


def render(
    argv: list[str], args: argparse.Namespace, runs: list[dict], sweeps: list[list[dict]], shot: str | None
) -> str:
    env = collect_environment()
    lines = [
        "# The README's demo: float against INT8 on resnet_wide_digits",
        "",
        f"Machine: {describe_environment(env)}. Run: `python bench/demo.py {shlex.join(sys.argv[1:])}`.",
        "",
        f"## The README's command, {len(runs)} runs",
        "",
        f"`{shlex.join(argv + args.run_arg)}`, each run a fresh process; numbers from its JSON report.",
        "",
        *run_table(runs, "run"),
        "",
        f"Printed INT8 speedup: {spread([r['speedup'] for r in runs]) if runs else 'not run'}.",
        "",
    ]
    batches = [r["batch"] for r in sweeps[0]] if sweeps else []
    if sweeps:
        lines += [
            "## onnxq bench, float and INT8 interleaved",
            "",
            f"`onnxq bench FLOAT INT8 --duration {args.duration:g}{''.join(f' --batch {b}' for b in batches)}`, "
            f"{len(sweeps)} times (FLOAT: the model above; INT8: `onnxq quantize` of it, default recipe).",
            "",
        ]
    for sweep in sweeps:
        lines += [*run_table(sweep, "batch"), ""]
    for b in batches:
        lines.append(
            f"- batch {b}: INT8 speedup {spread([r['speedup'] for s in sweeps for r in s if r['batch'] == b])}"
        )
    if shot:
        lines += ["", "## Screenshot of the HTML report", "", shot]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
