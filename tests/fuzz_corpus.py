"""A seeded corpus of malformed inputs for the whole CLI, and the judge of what onnxq did with each.

``generate(n, seed)`` returns ``n`` cases, the same ones for the same seed (case ``i`` depends only on the
seed and ``i``, so the first 300 of 1,000 are the 300 of a shorter run). A case (tests/fuzz_case.py) is a
folder to lay out: a model (``m/model.onnx``, beside its external data), calibration data, evaluation data,
maybe a recipe or files placed outside the model's folder, and the argument changes that point the commands
at them. The case classes come from the sample models, damaged in every way onnxq has crashed or hung on:
tests/fuzz_models.py (truncations, byte flips, protobuf field edits of element and data types, dims,
attributes and Conv groups, external-data locations that escape the folder, are absolute, missing or
loops, FIFOs) and tests/fuzz_data.py (data files of every broken kind built by tests/malformed.py, arrays
that do not fit, output paths that are inputs, bad recipes).

``run_case`` runs ``onnxq inspect``, ``quantize`` and ``eval`` on a case through ``onnxq.cli.main`` and
``judge`` checks each: exit code 0 or 2, never an exception or 1; a first stderr line ``error:`` on 2 (and
not the pipeline's "pass X failed: SomeError", a crash in disguise); the inputs byte-identical afterwards;
no output or temporary file left behind by a failure; and cases that must fail (an escape, an output that
is an input, a FIFO) did fail. tests/test_fuzz_inputs.py runs 360 cases in-process; bench/fuzz_inputs.py
runs 1,000+ each in a subprocess with a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuzz_case import COMMANDS, OUT, TESTS, Case, Fifo, Folder, Link, Sources
from fuzz_data import data_kind, data_values, huge_data, npy_header, npz_members, output_paths, recipe, zip_container
from fuzz_models import (
    attribute,
    byte_flip,
    data_type,
    elem_type,
    external_data,
    fifo,
    input_dims,
    model_file,
    op_swap,
    reshaped_weight,
    structure,
    tensor_dims,
    truncate,
    weights,
)

# Each family with its weight in the schedule: FIFO-bearing and GiB-bomb families are rarer (a FIFO case
# costs a subprocess), the cheap data families and the structural model edits more common.
FAMILIES: list[tuple[Callable[[np.random.Generator, Sources], Case], int]] = [
    (truncate, 3), (byte_flip, 4), (elem_type, 3), (data_type, 3), (tensor_dims, 3), (input_dims, 3),
    (attribute, 5), (weights, 2), (structure, 4), (model_file, 2), (external_data, 4), (npz_members, 2),
    (npy_header, 4), (zip_container, 3), (huge_data, 2), (data_kind, 2), (data_values, 3), (output_paths, 3),
    (recipe, 2), (fifo, 1), (reshaped_weight, 3), (op_swap, 3),
]  # fmt: skip
SCHEDULE = [family for family, weight in FAMILIES for _ in range(weight)]


def generate(n: int, seed: int = 0, src: Sources | None = None) -> list[Case]:
    """``n`` cases; case ``i`` comes from family ``SCHEDULE[i % len]`` with a generator seeded by (seed, i)."""
    src = src or Sources()
    order = np.random.default_rng(seed).permutation(len(SCHEDULE))
    cases = []
    for i in range(n):
        family = SCHEDULE[order[i % len(SCHEDULE)]]
        case = family(np.random.default_rng([seed, i]), src)
        case.name = f"{i:04d}:{case.klass}:{case.name}"
        cases.append(case)
    return cases


# --- laying a case out and running it ------------------------------------------------------------------


def lay_out(case: Case, root: Path) -> None:
    """Create the case's files under ``root`` (which must exist and be empty), and its empty output folder."""
    (root / OUT).mkdir()
    for rel, spec in case.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, Fifo):
            os.mkfifo(path)
        elif isinstance(spec, Link):
            path.symlink_to(spec.target)
        elif isinstance(spec, Folder):
            path.mkdir()
        else:
            path.write_bytes(spec)


def argvs(case: Case, root: Path) -> dict[str, list[str]]:
    """The command lines of the case, by command."""
    p = {key: str(root / case.path(key)) for key in ("model", "calib", "data", "output", "report")}
    base = {
        "inspect": ["inspect", p["model"]],
        "quantize": ["quantize", p["model"], "-o", p["output"], "--calib", p["calib"], "--no-progress"],
        "eval": ["eval", p["model"], "--data", p["data"], "--report", p["report"]],
    }
    extra = {cmd: [a.replace("{root}", str(root)) for a in case.args.get(cmd, [])] for cmd in COMMANDS}
    return {cmd: base[cmd] + extra[cmd] for cmd in COMMANDS}


@dataclass
class Ran:
    code: int | None  # None: an exception escaped main, or the case hung
    out: str = ""
    err: str = ""
    exception: str = ""
    left: list[str] = field(default_factory=list)  # what was in the output folder afterwards
    native: str = ""  # what native code wrote to file descriptor 2 (only where it is captured)


def execute(argv: list[str], out_dir: str) -> Ran:
    """Run one command line through onnxq.cli.main, note what it left in ``out_dir`` and empty it."""
    from onnxq.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            ran = Ran(main(argv), out.getvalue(), err.getvalue())
    except BaseException as exc:  # noqa: BLE001 - an exception out of main is what the corpus looks for
        ran = Ran(None, out.getvalue(), err.getvalue(), f"{type(exc).__name__}: {exc}"[:300])
    folder = Path(out_dir)
    if folder.is_dir():
        ran.left = sorted(p.name for p in folder.iterdir())
        for path in folder.iterdir():
            if path.is_file() or path.is_symlink():
                path.unlink()
    return ran


def execute_capturing_fd2(argv: list[str], out_dir: str) -> Ran:
    """:func:`execute` with file descriptor 2 sent to a file: what native code (ORT's logger) writes to the
    real stderr, before onnxq's own lines, lands in ``Ran.native``."""
    import tempfile

    with tempfile.TemporaryFile() as native:
        saved = os.dup(2)
        os.dup2(native.fileno(), 2)
        try:
            ran = execute(argv, out_dir)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        native.seek(0)
        ran.native = native.read().decode("utf-8", "replace")[-2000:]
    return ran


_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from fuzz_corpus import execute
lines, out_dir = json.loads(sys.argv[1]), sys.argv[2]
print(json.dumps([execute(argv, out_dir).__dict__ for argv in lines]))
"""


def execute_in_subprocess(lines: list[list[str]], out_dir: str, timeout: float) -> list[Ran]:
    """The command lines one after the other in a fresh interpreter; every one a hang on a timeout."""
    code = _CHILD.format(tests=str(TESTS))
    env = {k: v for k, v in os.environ.items() if k != "ONNXQ_DEBUG"}
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(lines), out_dir], capture_output=True,
                              text=True, timeout=timeout, env=env)  # fmt: skip
    except subprocess.TimeoutExpired:
        return [Ran(None, exception="hang") for _ in lines]
    try:
        return [Ran(**r) for r in json.loads(done.stdout.strip().splitlines()[-1])]
    except (ValueError, IndexError, TypeError):
        return [Ran(None, exception=f"child died: rc {done.returncode}: {done.stderr[-300:]}") for _ in lines]


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` outside the output folder: file digests, link targets, kinds."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir.parts[:1] == (OUT,):
            continue
        for name in dirnames + filenames:
            path, rel = Path(dirpath) / name, str(rel_dir / name)
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_fifo():
                found[rel] = "fifo"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


_MASKED = re.compile(r"^error: pass \S+ failed: [A-Za-z_.]*(Error|Exception|Warning)\b")


def judge(case: Case, command: str, ran: Ran, before: dict[str, str], after: dict[str, str]) -> str | None:
    """None when onnxq handled the command correctly; else what was wrong (one line)."""
    if ran.exception == "hang":
        return "hang"
    if ran.code is None:
        return f"exception {ran.exception}"
    first = (ran.err.strip().splitlines() or [""])[0]
    if ran.code not in (0, 2):
        return f"exit {ran.code}: {first[:200]}"
    if ran.code == 2 and not first.startswith("error:"):
        return f"exit 2, stderr starts {first[:120]!r}"
    if ran.code == 2 and _MASKED.match(first):
        return f"a crash reported as a pass failure: {first[:200]}"
    if ran.code == 0 and command in case.must_fail:
        return "exit 0, but this case must fail"
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return f"files outside {OUT}/ changed or appeared: {changed[:5]}"
    expected = set()
    if ran.code == 0 and command == "quantize" and "output" not in case.paths:
        expected = {"q.onnx"}
    elif ran.code == 0 and command == "eval" and "report" not in case.paths:
        expected = {"r.json"}
    if set(ran.left) != expected:
        return f"exit {ran.code} left {ran.left} in {OUT}/ (expected {sorted(expected)})"
    return None


def outcome(command: str, ran: Ran, problem: str | None) -> str:
    """quantized / ok / clean error / traceback / hang / wrong (a rule broken without a crash)."""
    if problem == "hang":
        return "hang"
    if ran.code is None or ran.code == 1 or (problem and problem.startswith("a crash")):
        return "traceback"
    if problem:
        return "wrong"
    if ran.code == 2:
        return "clean error"
    return "quantized" if command == "quantize" else "ok"


def run_case(case: Case, root: Path, *, in_subprocess: bool = False, timeout: float = 60.0) -> dict[str, tuple]:
    """Lay the case out in ``root`` and run its commands, in a subprocess with ``timeout`` where it may hang;
    {command: (Ran, problem or None)}."""
    lay_out(case, root)
    before = snapshot(root)
    lines = argvs(case, root)
    out_dir = str(root / OUT)
    results: dict[str, tuple] = {}
    if in_subprocess or case.hang_risk:
        rans = execute_in_subprocess([lines[c] for c in COMMANDS], out_dir, timeout)
        after = snapshot(root)
        for command, ran in zip(COMMANDS, rans, strict=True):
            results[command] = (ran, judge(case, command, ran, before, after))
        return results
    for command in COMMANDS:
        ran = execute(lines[command], out_dir)
        results[command] = (ran, judge(case, command, ran, before, snapshot(root)))
    return results
