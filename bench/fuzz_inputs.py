"""The malformed-input corpus at scale: 1,000+ seeded cases, each in its own subprocess with a timeout.

The cases come from tests/fuzz_corpus.py (the generator tests/test_fuzz_inputs.py runs 360 of, in-process).
Each case is laid out in a fresh folder by this process, which then forks a child (from a fork server that
has onnxq and onnxruntime imported, so a case costs a fork, not an interpreter start) to run
``onnxq inspect``, ``quantize`` and ``eval`` on it through ``onnxq.cli.main``, with file descriptor 2
captured so that native log lines (ORT's) are seen too. A child that does not finish in ``--timeout``
seconds is killed and its case counted as a hang. This process then judges each command: exit code 0 or 2,
a first stderr line ``error:``, the inputs byte-identical, no file left behind by a failure, a failure
where the case must fail. Usage::

    python bench/fuzz_inputs.py [--cases 1000] [--seed 20260601] [--timeout 60] [--jobs 2] [--out FILE]

It writes bench/results/fuzz_inputs.md: machine, versions, command, counts per case class and outcome
(quantized / clean error / traceback / hang / wrong), and every problem found.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzz_corpus as fc  # noqa: E402  (tests/fuzz_corpus.py)

PRELOAD = ["onnxq.cli", "onnxq.cli.inspect", "onnxq.cli.quantize", "onnxq.cli.eval", "onnxq.quantize.driver",
           "onnxq.measure.evaluate", "onnxq.passes.prepare", "onnxruntime", "fuzz_corpus"]  # fmt: skip
OUTCOMES = ("quantized", "ok", "clean error", "traceback", "hang", "wrong")


def child(lines: list[list[str]], out_dir: str, conn) -> None:
    """In the forked child: run the command lines in-process and send back what each did."""
    conn.send([asdict(fc.execute_capturing_fd2(argv, out_dir)) for argv in lines])
    conn.close()


def run_one(ctx, case: fc.Case, root: Path, timeout: float) -> tuple[dict, float]:
    """Lay the case out, run it in a child, judge it: ({command: (Ran, problem)}, seconds)."""
    fc.lay_out(case, root)
    before = fc.snapshot(root)
    lines = fc.argvs(case, root)
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=([lines[c] for c in fc.COMMANDS], str(root / fc.OUT), send))
    start = time.perf_counter()
    proc.start()
    send.close()
    rans = None
    if receive.poll(timeout):
        try:
            rans = [fc.Ran(**r) for r in receive.recv()]
        except EOFError:  # the child died without an answer (a crash of the interpreter itself)
            rans = [fc.Ran(None, exception=f"child died (exit {proc.exitcode})") for _ in fc.COMMANDS]
    proc.join(1 if rans is not None else 0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if rans is None:
        rans = [fc.Ran(None, exception="hang" if proc.exitcode in (-9, None) else f"child died ({proc.exitcode})")
                for _ in fc.COMMANDS]  # fmt: skip
    elapsed = time.perf_counter() - start
    after = fc.snapshot(root)
    return {c: (r, fc.judge(case, c, r, before, after)) for c, r in zip(fc.COMMANDS, rans, strict=True)}, elapsed


def case_outcome(results: dict) -> str:
    """One outcome per case: the worst of its commands, else quantized when quantize succeeded."""
    outs = {fc.outcome(c, ran, problem) for c, (ran, problem) in results.items()}
    for worst in ("hang", "traceback", "wrong"):
        if worst in outs:
            return worst
    return "quantized" if "quantized" in outs else "clean error"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20260601)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it is a hang")
    parser.add_argument("--jobs", type=int, default=1, help="cases run at once (each in its own child)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz_inputs.md")
    args = parser.parse_args()

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    start = time.perf_counter()
    cases = fc.generate(args.cases, args.seed)
    generated_s = time.perf_counter() - start
    records = []
    work = Path(tempfile.mkdtemp(prefix="onnxq-fuzz-"))
    try:
        pending = list(enumerate(cases))
        records = run_all(ctx, pending, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_s = time.perf_counter() - start
    text = report(cases, records, args, generated_s, total_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text.split("## Problems")[0])
    print(f"wrote {args.out}")


def run_all(ctx, pending: list[tuple[int, fc.Case]], work: Path, args) -> list[tuple]:
    """Every case, ``args.jobs`` at a time (a thread per job slot: the children do the work)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[int, fc.Case]) -> tuple:
        i, case = item
        root = work / f"c{i:05d}"
        root.mkdir()
        results, seconds = run_one(ctx, case, root, args.timeout)
        shutil.rmtree(root, ignore_errors=True)
        if (i + 1) % 100 == 0:
            print(f"{i + 1} cases done", flush=True)
        return case, results, seconds

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        return list(pool.map(one, pending))


def report(cases: list[fc.Case], records: list[tuple], args, generated_s: float, total_s: float) -> str:
    from onnxq.report.environment import collect_environment, describe_environment

    env = collect_environment()
    versions = env.get("versions") or {}
    by_class: dict[str, Counter] = defaultdict(Counter)
    by_command: dict[str, Counter] = defaultdict(Counter)
    problems, known, native_first, changed, left = [], [], 0, 0, 0
    slowest = sorted(((s, c.name) for c, _, s in records), reverse=True)[:5]
    for case, results, _ in records:
        outcome = case_outcome(results)
        by_class[case.klass][outcome] += 1
        for command, (ran, problem) in results.items():
            by_command[command][fc.outcome(command, ran, problem)] += 1
            if ran.code == 2 and ran.native.strip():
                native_first += 1
            if problem and "changed or appeared" in problem:
                changed += 1
            if problem and " left " in problem:
                left += 1
            if problem:
                (known if case.known else problems).append(f"{case.name} [{command}]: {problem}")
    command_line = "python bench/fuzz_inputs.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Malformed inputs: onnxq inspect / quantize / eval on a seeded corpus, each case in a subprocess",
        "",
        f"Command (from the repository root): `{command_line.strip()}`",
        "",
        f"Machine: {describe_environment(env)}; {(env.get('memory_total_bytes') or 0) / 2**30:.0f} GiB RAM.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f", Python {env.get('python')}.",
        f"Settings: {len(cases)} cases, seed {args.seed}, timeout {args.timeout:g} s per case, {args.jobs} at a "
        f"time; generated in {generated_s:.1f} s, all run in {total_s:.0f} s.",
        "",
        "A case is counted once, by its worst command: **hang** (killed at the timeout), **traceback** (an "
        "exception out of `onnxq.cli.main`, exit 1 `internal error:`, or a crash inside a pass reported as "
        "`pass X failed: SomeError`), **wrong** (exit 0 or 2 but a rule broken: a first stderr line other "
        "than `error:`, an input changed, a file left behind, a case that must fail exiting 0), else "
        "**quantized** when `onnxq quantize` wrote its model, else **clean error**.",
        "",
        "| case class | cases | " + " | ".join(o for o in OUTCOMES if o != "ok") + " |",
        "|---|---|" + "---|" * (len(OUTCOMES) - 1),
    ]
    for klass in sorted(by_class):
        c = by_class[klass]
        lines.append(f"| {klass} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES if o != "ok") + " |")
    totals = Counter()
    for c in by_class.values():
        totals.update(c)
    lines.append(f"| **all** | **{sum(totals.values())}** | " + " | ".join(f"**{totals[o]}**" for o in OUTCOMES
                                                                         if o != "ok") + " |")  # fmt: skip
    known_bad = sum(1 for case, results, _ in records if case.known and case_outcome(results) == "traceback")
    if known_bad:
        lines += ["", f"Of the {totals['traceback']} tracebacks, {known_bad} are cases marked known, left to other "
                  f"work: {'; '.join(sorted({c.known for c, _, _ in records if c.known}))} (listed at the end)."]
    lines += ["", "Per command (every case runs all three):", "", "| command | " + " | ".join(OUTCOMES) + " |",
              "|---|" + "---|" * len(OUTCOMES)]  # fmt: skip
    for command in fc.COMMANDS:
        lines.append(f"| {command} | " + " | ".join(str(by_command[command][o]) for o in OUTCOMES) + " |")
    runs = sum(sum(c.values()) for c in by_command.values())
    lines += [
        "",
        f"Inputs byte-identical afterwards: {'yes' if not changed else 'no'}, in all {len(cases)} cases "
        f"({changed} command runs changed or added a file outside the output folder).",
        f"Partial outputs: {left} of {runs} command runs left a file (output, report or temporary) they should "
        "not have; a failed command must leave none.",
        f"Native log lines (ORT's, on file descriptor 2) before onnxq's `error:` line: {native_first} of the "
        f"{sum(c['clean error'] for c in by_command.values())} clean errors.",
        "Slowest cases: " + ", ".join(f"{name} {s:.1f} s" for s, name in slowest) + ".",
        "",
        "## Problems",
        "",
    ]
    lines += [f"- {p}" for p in problems[:200]] or ["None."]
    if len(problems) > 200:
        lines.append(f"- ... and {len(problems) - 200} more")
    if known:
        reasons = sorted({c.known for c, _, _ in records if c.known})
        lines += ["", f"Known, left to other work ({'; '.join(reasons)}): {len(known)} command runs:", ""]
        lines += [f"- {p}" for p in known[:20]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
