"""A mutation run the project keeps: one-line mistakes applied to onnxq/ and passes/, each against the tests.

Each mutant of bench/mutants.py replaces one exact snippet of one file, which is restored afterwards (and on
interrupt, with its modification time, so no stale bytecode survives; the children write none). Stage 1 runs
the mutant's area of the suite with ``-x``; a mutant that survives it runs again on the whole suite minus the
slow tests (stage 2), so that no mutant survives merely because its area was guessed too narrow. Killed means
some test failed (or the run passed its time limit: a hang is caught too); a snippet no longer in the file
(or there twice) is *stale*, a mutant that does not compile *invalid*, and a mutant marked ``equivalent``
(with its reason) is listed, not run. Writes bench/results/mutation.md: kill rate per module, survivors,
equivalents, the safety promises and the tests that guard them, the machine, versions, command and time.

    python bench/mutation.py [--only NAME_REGEX] [--count | --count-promises] [--stage1] [--no-write]

``--count`` runs stage 1 without ``-x`` and records how many tests each mutant fails (slower): the mutants
that one test alone catches are the weak spots.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from mutants import MUTANTS, PROMISES, Mutant  # noqa: E402

SLOW = ("tests/test_golden_quantize.py", "tests/test_fuzz_inputs.py")  # env-gated golden hashes; the fuzz corpus
TIME_LIMIT_S = 300  # per pytest run of a mutant's area; a mutant that makes the suite hang is killed by it
SUITE_LIMIT_S = 900  # the whole suite (stage 2): ~4 min quiet, so a busy machine does not pass for a hang
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)
_COUNTS = re.compile(r"(\d+) (failed|errors?)\b")


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed | survived | stale | invalid | equivalent
    stage: int = 0  # 1: killed by its area; 2: only by the whole suite
    killer: str = ""  # the first failing test
    failures: int | None = None  # with --count: tests of the area that failed
    seconds: float = 0.0


def pytest_run(tests: tuple[str, ...], *, stop_first: bool, limit: int = TIME_LIMIT_S) -> tuple[bool, str, int]:
    """(passed, first failing test, number failed) of one pytest run in a child process."""
    ignore = [a for path in SLOW for a in ("--ignore", path)]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-rfE", *ignore,
           *(["-x"] if stop_first else []), *tests]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        return False, f"(timed out after {limit} s)", 1
    out = done.stdout + done.stderr
    first = _FAILED.search(out)
    failed = sum(int(n) for n, _ in _COUNTS.findall(out.splitlines()[-1] if out.strip() else ""))
    if done.returncode not in (0, 1) and not first:
        return False, f"(pytest exited {done.returncode})", max(failed, 1)
    return done.returncode == 0, first.group(1) if first else "", failed


def run_mutant(m: Mutant, count: bool, broad: bool = True) -> Outcome:
    if m.equivalent:
        return Outcome(m, "equivalent")
    path = REPO / m.path
    original = path.read_text()
    if original.count(m.old) != 1:
        return Outcome(m, "stale")
    mutated = original.replace(m.old, m.new)
    try:
        compile(mutated, str(path), "exec")
    except SyntaxError:
        return Outcome(m, "invalid")
    times = os.stat(path)
    start = time.perf_counter()
    try:
        path.write_text(mutated)
        passed, killer, failed = pytest_run(m.tests, stop_first=not count)
        outcome = Outcome(m, "survived" if passed else "killed", 1, killer, failed if count else None)
        if passed and broad:
            passed, killer, _ = pytest_run(("tests",), stop_first=True, limit=SUITE_LIMIT_S)
            outcome = Outcome(m, "survived" if passed else "killed", 0 if passed else 2, killer)
    finally:
        path.write_text(original)
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    outcome.seconds = time.perf_counter() - start
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the mutants whose name matches this regular expression")
    parser.add_argument("--count", action="store_true", help="stage 1 without -x: count the failing tests")
    parser.add_argument("--count-promises", action="store_true", help="--count for the safety promises' mutants only")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/results/mutation.md")
    parser.add_argument("--stage1", action="store_true", help="no second stage on the whole suite (a quick look)")
    parser.add_argument("--update", action="store_true", help="run the --only mutants and those the last report "
                        "lacks; keep the last report's outcome of the others (bench/results/mutation.md)")  # fmt: skip
    args = parser.parse_args()
    start = time.perf_counter()
    from mutation_report import previous_command, previous_minutes, previous_outcomes, write_report

    earlier = previous_outcomes(REPO) if args.update else {}
    results = []
    for m in MUTANTS:
        chosen = (args.only and re.search(args.only, m.name)) or (args.update and m.name not in earlier)
        chosen = chosen or (not args.update and re.search(args.only, m.name))
        if not chosen and m.name in earlier:
            results.append(Outcome(m, **earlier[m.name]))
            continue
        if not chosen:
            continue
        count = args.count or (args.count_promises and any(m.name in names for names in PROMISES.values()))
        results.append(run_mutant(m, count, broad=not args.stage1))
        r = results[-1]
        extra = f" [{r.failures} failed]" if r.failures is not None else ""
        print(f"{r.status:10} {m.name} ({r.seconds:.1f} s) {r.killer}{extra}", flush=True)
    if not args.no_write:
        argv = " ".join(["python", *[a if a != sys.argv[0] else "bench/mutation.py" for a in sys.argv]])
        command = f"`{argv}` (from the repository root)"
        if args.update and previous_command(REPO):
            command = f"{previous_command(REPO)}, then `{argv}`"
        minutes = time.perf_counter() - start + (previous_minutes(REPO) * 60 if args.update else 0)
        print(write_report(results, command, minutes, REPO, PROMISES))


if __name__ == "__main__":
    main()
