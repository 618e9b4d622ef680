"""Every ONNX backend node test model through ``onnxq inspect``, ``quantize`` and ``eval``: does any crash or hang?

    python bench/backend_suite.py [--timeout 60] [--workers 2] [--only test_clip*] [--out bench/results/...]

For each ``node/<test>/model.onnx`` of the onnx 1.22.0 wheel (cached outside the repository, see
``tests/backend_node_data.py``), three commands run, each in its own child process with a timeout:
``onnxq inspect MODEL``, ``onnxq quantize MODEL -o OUT --calib DIR`` (the test's own folder: its
``test_data_set_0`` is the calibration feed) and ``onnxq eval MODEL --data DIR`` (its ``output_*.pb`` are the
references). The children are forked from a worker that has imported onnxq already, so the ~5,300 commands
do not pay 5,300 interpreter start-ups; each still has its own process, stdout and stderr, and one that
passes the timeout is killed and counted as a hang. A quantized model that was written is then loaded in
ONNX Runtime (in a child too) and run on the test inputs: its outputs must keep the float model's shapes
and dtypes.

Outcomes: ``ok``; ``error`` (exit 2, ``error:`` and ``hint:`` lines: the first line is kept, and grouped by a
normalized message); ``bug-error`` (a clean error whose hint calls it an onnxq bug); ``unclean-error`` (exit 2 and
``error:``, but not exactly an ``error:`` line and a ``hint:`` line); ``traceback`` (any other
exit: ``internal error:``, a Python traceback, a usage error); ``crash`` (killed by a signal); ``hang``.
Writes ``bench/results/backend_suite.md`` and, beside it, ``backend_suite.jsonl`` (one record per model; git ignores
it).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import fnmatch
import json
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import backend_node_data  # noqa: E402  (tests/ is not a package)

COMMANDS = ("inspect", "quantize", "eval")
_PROGRESS_LINE = re.compile(r"^[\w ()-]+: \d+ \w+ in [\d.]+ s$")  # onnxq.progress's line when not on a terminal
BAD_OUTCOMES = ("traceback", "crash", "hang", "bug-error", "unclean-error", "check-failed")


# --- one command in a forked child --------------------------------------------------------------


def run_forked(target: Any, args: tuple, timeout: float, workdir: Path) -> dict[str, Any]:
    """Fork; the child calls ``target(*args)`` (an exit code) with stdout/stderr in files. Returns
    ``{"rc", "signal", "hang", "seconds", "stdout", "stderr"}``."""
    out, err = workdir / "stdout", workdir / "stderr"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _child(target, args, out, err)
    status, hang = _wait(pid, timeout)
    seconds = time.monotonic() - start
    read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
    result = {"rc": None, "signal": None, "hang": hang, "seconds": round(seconds, 3),
              "stdout": read(out)[-4000:], "stderr": read(err)[-8000:]}  # fmt: skip
    if not hang and os.WIFEXITED(status):
        result["rc"] = os.WEXITSTATUS(status)
    elif not hang:
        result["signal"] = os.WTERMSIG(status)
    return result


def _child(target: Any, args: tuple, out: Path, err: Path) -> None:
    code = 3
    try:
        os.setpgid(0, 0)  # its own group, so that a timeout kills whatever it started too
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        code = int(target(*args) or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 3
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status = os.waitpid(pid, 0)
    return status, True


def cli_main(argv: list[str]) -> int:
    from onnxq.cli import main

    return main(argv)


# --- the check of a quantized model ---------------------------------------------------------------


def check_quantized(model: str, quantized: str, data: str, result_file: str) -> int:
    """Run the float and the quantized model on the test inputs in ORT; write shapes/dtypes of both."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from onnxq.data import open_dataset
    from onnxq.model import lower_ir_version_for_ort

    float_model = onnx.load(model)
    feeds = list(open_dataset(data, float_model).batches())[0]
    lower_ir_version_for_ort(float_model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    report: dict[str, Any] = {}
    for key, source in (("float", float_model.SerializeToString()), ("quantized", quantized)):
        try:
            sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
            outs = sess.run(None, feeds)
            report[key] = [[list(np.shape(o)), str(np.asarray(o).dtype)] for o in outs]
        except Exception as exc:
            report[key] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    Path(result_file).write_text(json.dumps(report))
    return 0


def check_verdict(report: dict[str, Any]) -> str:
    """``same`` (outputs keep shapes and dtypes), ``differs: ...``, ``fails: ...`` or ``no float run``."""
    q, f = report.get("quantized"), report.get("float")
    if isinstance(q, str):
        return f"fails: {q}"
    if isinstance(f, str):
        return "no float run"  # nothing to compare with, but ORT ran the quantized model
    return "same" if q == f else f"differs: {f} -> {q}"


# --- one model -----------------------------------------------------------------------------------


def classify(run: dict[str, Any]) -> tuple[str, str]:
    """(outcome, first stderr line) of one command's run."""
    lines = [ln for ln in run["stderr"].splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if run["hang"]:
        return "hang", f"no exit after {run['seconds']:.0f} s"
    if run["signal"] is not None:
        return "crash", f"killed by signal {run['signal']}"
    if run["rc"] == 0:
        return "ok", ""
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    if run["rc"] == 2 and errors:
        i = errors[0]
        if "onnxq bug" in run["stderr"]:
            return "bug-error", lines[i]
        before_ok = all(_PROGRESS_LINE.match(ln) for ln in lines[:i])  # calibration's summary line may come first
        clean = before_ok and len(lines) == i + 2 and lines[i + 1].startswith("hint:")
        return ("error" if clean else "unclean-error"), lines[i]
    last = lines[-1] if lines else f"exit code {run['rc']}, no stderr"
    return "traceback", first if first.startswith("internal error:") else last


def run_model(test_dir: str, timeout: float) -> dict[str, Any]:
    """The record of one test folder: per command its outcome, first line, seconds; quantize's check."""
    model, record = str(Path(test_dir) / "model.onnx"), {"model": Path(test_dir).name}
    with tempfile.TemporaryDirectory(prefix="onnxq-backend-") as tmp:
        work = Path(tmp)
        quantized = str(work / "out.onnx")
        argv = {"inspect": ["inspect", model], "quantize": ["quantize", model, "-o", quantized, "--calib", test_dir],
                "eval": ["eval", model, "--data", test_dir]}  # fmt: skip
        for name in COMMANDS:
            run = run_forked(cli_main, (argv[name],), timeout, work)
            outcome, first = classify(run)
            record[name] = {"outcome": outcome, "first_line": first, "seconds": run["seconds"]}
            if outcome in BAD_OUTCOMES:
                record[name]["stderr_tail"] = run["stderr"][-2000:]
        if record["quantize"]["outcome"] == "ok":
            record["quantize"]["check"] = _check(model, quantized, test_dir, timeout, work)
            if not record["quantize"]["check"].startswith(("same", "no float run")):
                record["quantize"]["outcome"] = "check-failed"
    return record


def _check(model: str, quantized: str, test_dir: str, timeout: float, work: Path) -> str:
    result_file = work / "check.json"
    run = run_forked(check_quantized, (model, quantized, test_dir, str(result_file)), timeout, work)
    if run["hang"]:
        return "fails: the check hung"
    if run["rc"] != 0 or not result_file.exists():
        return f"fails: the check exited {run['rc'] or 'by signal ' + str(run['signal'])}: {run['stderr'][-300:]}"
    return check_verdict(json.loads(result_file.read_text()))


# --- the whole suite -----------------------------------------------------------------------------


_NOTHING = re.compile(r"^error: the model has nothing onnxq can quantize \((.*)\)$")


def normalize(line: str) -> str:
    """A first line with its particulars (paths, names, numbers, shapes) blanked, to group errors by class; for
    "nothing to quantize", the distinct skip reasons without the node names."""
    nothing = _NOTHING.match(line)
    if nothing:
        reasons = sorted({part.split(": ", 1)[-1] for part in nothing.group(1).split("; ")})
        line = "error: the model has nothing onnxq can quantize: " + "; ".join(reasons)
    text = re.sub(r"\S*/\S*", "<path>", line)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\[[^\]]*\]|\((?:[^()]|\([^()]*\))*\)", "(…)", text)  # one level of nesting
    text = re.sub(r"\b\d+(\.\d+)?\b", "N", text)
    return text[:160]


def warm_imports() -> None:
    """Import what the three commands import, before the workers fork: every child then starts warm, and all run
    the code as it was when the suite started, even if the files change meanwhile."""
    import importlib

    from onnxq.cli import COMMANDS as CLI_COMMANDS
    from onnxq.quantize.registry import all_passes

    modules = ("onnxruntime", "onnx_graphsurgeon", "onnx.reference", "onnxq.quantize.driver", "onnxq.measure.evaluate",
               "onnxq.inspect.facts", "onnxq.runtime.session", "onnxq.cli.summary")  # fmt: skip
    for name in modules:
        importlib.import_module(name)
    for command in COMMANDS:
        importlib.import_module(CLI_COMMANDS[command][0])
    all_passes()


def run_suite(dirs: list[Path], timeout: float, workers: int, jsonl: Path) -> list[dict[str, Any]]:
    warm_imports()
    records = []
    ctx = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool, open(jsonl, "w") as out:
        futures = {pool.submit(run_model, str(d), timeout): d for d in dirs}
        for i, fut in enumerate(cf.as_completed(futures), 1):
            try:
                record = fut.result()
            except Exception as exc:  # the bench itself failed on this model: say so, go on
                record = {"model": futures[fut].name, "bench_error": f"{type(exc).__name__}: {exc}"}
            records.append(record)
            out.write(json.dumps(record) + "\n")
            out.flush()
            if i % 50 == 0 or i == len(dirs):
                print(f"{i}/{len(dirs)} models", flush=True)
    return sorted(records, key=lambda r: r["model"])


def write_markdown(records: list[dict[str, Any]], path: Path, argv: list[str], seconds: float) -> None:
    from onnxq.report.environment import collect_environment

    env = collect_environment()
    v = env["versions"]
    lines = ["# ONNX backend node tests through onnxq", "",
             f"- machine: {env['cpu_model']}, {env['cpu_cores_usable']} usable cores ({env['cpu_cores_logical']} "
             f"logical), {(env['memory_total_bytes'] or 0) / 2**30:.0f} GiB", f"- {env['os']}",
             f"- versions: onnxq {v['onnxq']}, onnx {v['onnx']}, onnxruntime {v['onnxruntime']}, numpy {v['numpy']}, "
             f"python {env['python']}; models from the onnx {backend_node_data.ONNX_VERSION} wheel",
             f"- command: `python {' '.join(argv)}` ({seconds / 60:.1f} min)",
             f"- models: {len(records)}; per model `onnxq inspect MODEL`, `onnxq quantize MODEL -o OUT --calib DIR`, "
             "`onnxq eval MODEL --data DIR`, each in its own child process", ""]  # fmt: skip
    lines += _outcome_table(records) + _error_classes(records) + _bad_list(records)
    path.write_text("\n".join(lines) + "\n")


def _outcome_table(records: list[dict[str, Any]]) -> list[str]:
    outcomes = ("ok", "error", *BAD_OUTCOMES)
    counts = {c: collections.Counter(r[c]["outcome"] for r in records if c in r) for c in COMMANDS}
    lines = ["## Outcomes", "", "| command | " + " | ".join(outcomes) + " |", "|---" * (len(outcomes) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(counts[c][o]) for o in outcomes) + " |" for c in COMMANDS]
    checks = collections.Counter(r["quantize"].get("check", "-").split(":")[0] for r in records if "quantize" in r)
    lines += ["", "Quantized models run in ORT on the test inputs: "
              + ", ".join(f"{k}: {n}" for k, n in sorted(checks.items()) if k != "-"), ""]  # fmt: skip
    broken = [r["model"] for r in records if "bench_error" in r]
    return lines + ([f"Bench errors (not onnxq's): {', '.join(broken)}", ""] if broken else [])


def _error_classes(records: list[dict[str, Any]]) -> list[str]:
    lines = ["## Clean errors by class", ""]
    for c in COMMANDS:
        groups: dict[str, list[str]] = collections.defaultdict(list)
        for r in records:
            if c in r and r[c]["outcome"] == "error":
                groups[normalize(r[c]["first_line"])].append(r["model"])
        total = sum(map(len, groups.values()))
        lines += [f"### {c} ({total})", "", "| n | message (normalized) | e.g. |", "|---|---|---|"]
        for msg, models in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            lines.append(f"| {len(models)} | {msg.replace('|', '/')} | {', '.join(models[:3])} |")
        lines.append("")
    return lines


def _bad_list(records: list[dict[str, Any]]) -> list[str]:
    bad = [(r["model"], c, r[c]) for r in records for c in COMMANDS if c in r and r[c]["outcome"] in BAD_OUTCOMES]
    lines = [f"## Tracebacks, crashes, hangs, bug errors and failed checks ({len(bad)})", ""]
    if not bad:
        return lines + ["None.", ""]
    lines += ["| model | command | outcome | first line |", "|---|---|---|---|"]
    for model, c, entry in bad:
        what = entry.get("check") if entry["outcome"] == "check-failed" else entry["first_line"]
        lines.append(f"| {model} | {c} | {entry['outcome']} | {str(what).replace('|', '/')[:200]} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per command; past it, a hang")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="at most 2 by default")
    parser.add_argument("--only", action="append", help="fnmatch pattern of test names (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "backend_suite.md")
    args = parser.parse_args(argv)
    root = backend_node_data.node_models_root()
    if root is None:
        print(backend_node_data.LAST_FAILURE, file=sys.stderr)
        return 2
    dirs = [d for d in backend_node_data.model_dirs(root) if not args.only or any(fnmatch.fnmatch(d.name, p)
            for p in args.only)]  # fmt: skip
    os.environ.pop("ONNXQ_DEBUG", None)
    start = time.monotonic()
    records = run_suite(dirs, args.timeout, args.workers, args.out.with_suffix(".jsonl"))
    write_markdown(records, args.out, [os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])],
                   time.monotonic() - start)  # fmt: skip
    bad = sum(r[c]["outcome"] in BAD_OUTCOMES for r in records for c in COMMANDS if c in r)
    print(f"wrote {args.out}: {len(records)} models, {bad} bad outcomes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
