"""A mutation run the project keeps: one-line mistakes applied to onnxq/ and passes/, each against the tests.

Each mutant replaces one exact snippet of one file (the kind of change a careless edit makes), runs the test
files that cover that module, and counts as killed when they fail. The file is restored after every mutant
(and on interrupt). A mutant whose snippet is no longer in the file is reported as stale, so the list is kept
honest as the code moves. Writes bench/results/mutation.md with the kill rate per module and the survivors.

    python bench/mutation.py [--only NAME_SUBSTRING]
"""

# ruff: noqa: E501  (the mutant table is data: one mutant a line)
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


M = Mutant
MUTANTS = [
    # --- security and safety promises
    M("object arrays accepted", "onnxq/data_files.py", "    if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS", "    if dtype.kind not in _NUMERIC_KINDS + 'O'", ("tests/test_guards.py", "tests/test_data_files.py")),
    M("output may equal input", "onnxq/model.py", "    if input_path is not None and same_file(out, Path(input_path)):", "    if False:", ("tests/test_model_io.py", "tests/test_output_paths.py")),
    # --- the pipeline driver
    M("mutation check off", "onnxq/quantize/pipeline.py", "if before is not None and model_fingerprint(model) != before:", "if False:", ("tests/test_pipeline.py",)),
    M("order check off", "onnxq/quantize/pipeline.py", "        missing = [n for n in spec.needs if n not in have]", "        missing = []", ("tests/test_pipeline.py",)),
    M("history not named", "onnxq/quantize/pipeline.py", '    return f"{hint} {history}" if hint else history', "    return hint or ''", ("tests/test_pipeline.py",)),
    M("result type unchecked", "onnxq/quantize/pipeline.py", "    if not isinstance(result, PassResult):", "    if False:", ("tests/test_pipeline.py",)),
    # --- the recipe and its parser
    M("unknown option accepted", "onnxq/quantize/options.py", "        if name not in known:", "        if False:", ("tests/test_pipeline.py", "tests/test_adaround.py")),
    M("bool accepted as int", "onnxq/quantize/options.py", "        if isinstance(value, bool) or not isinstance(value, int):", "        if not isinstance(value, int):", ("tests/test_guards.py", "tests/test_adaround.py", "tests/test_bias_correction.py")),
    M("stray pass options accepted", "onnxq/quantize/recipe.py", "        if stray:", "        if False:", ("tests/test_pipeline.py",)),
    M("tensorrt activations not symmetric", "onnxq/quantize/targets.py", '    "symmetric_activations": True,\n    "zero_point_zero": True,', '    "symmetric_activations": False,\n    "zero_point_zero": True,', ("tests/test_targets_and_eps.py",)),
    # --- data as feeds
    M("batch axis always 0", "onnxq/feeds.py", "        axes = {s.name: (s.shape.index(common[0]) if common else 0) for s in dynamic}", "        axes = {s.name: 0 for s in dynamic}", ("tests/test_feeds.py",)),
    M("feeds joined across shapes", "onnxq/feeds.py", "        elif x.ndim != y.ndim or x.shape[:axis] + x.shape[axis + 1 :] != y.shape[:axis] + y.shape[axis + 1 :]:", "        elif x.ndim != y.ndim:", ("tests/test_feeds.py",)),
    M("unbatched inputs not compared", "onnxq/feeds.py", "            if x.shape != y.shape or not np.array_equal(x, y):", "            if x.shape != y.shape:", ("tests/test_feeds.py",)),
    M("test-data sets in name order", "onnxq/feeds.py", "    sets = sorted((int(m.group(1)), p)", "    sets = sorted((m.group(1), p)", ("tests/test_feeds.py",)),
    M("NaN in feeds accepted", "onnxq/data.py", "    if finite.all():\n        return", "    if True:\n        return", ("tests/test_feeds.py", "tests/test_quantize.py")),
    # --- quantization numerics
    M("mask sentinel kept", "onnxq/quantize/calibrate.py", "MASK_SENTINEL = -1e30", "MASK_SENTINEL = -np.inf", ("tests/test_attention_mask.py",)),
    M("percentile no interpolation", "onnxq/quantize/observers.py", "        frac = (target - below) / counts[b] if counts[b] else 1.0", "        frac = 1.0", ("tests/test_guards.py", "tests/test_calibrate.py")),
    M("clip fold any lower bound", "passes/qdq.py", "    return lo is not None and lo == 0.0", "    return lo is not None", ("tests/test_guards.py", "tests/test_qdq.py")),
    M("relu fold into graph output", "passes/qdq.py", "or src in g.outputs or len(g.consumers[src]) != 1", "or len(g.consumers[src]) != 1", ("tests/test_guards.py", "tests/test_qdq.py")),
    M("bias overflow unchecked", "passes/qdq.py", "    if not (s_b <= np.finfo(np.float32).max).all():", "    if False:", ("tests/test_feeds.py",)),
    M("dynamic weights per tensor", "passes/dynamic.py", "        amax = np.abs(w).max(axis=0) if per_channel else np.array(np.abs(w).max())", "        amax = np.array(np.abs(w).max())", ("tests/test_dynamic.py",)),
    M("dynamic rounding toward zero", "passes/dynamic.py", "        w_q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)", "        w_q = np.clip(np.trunc(w / scale), -127, 127).astype(np.int8)", ("tests/test_dynamic.py",)),
    M("embedding scale per table", "passes/_embeddings.py", "    amax = np.abs(table).max(axis=1, keepdims=True)", "    amax = np.abs(table).max(keepdims=True)", ("tests/test_dynamic.py",)),
    M("smoothquant alpha inverted", "passes/smoothquant.py", "    s = np.power(np.maximum(xmax, 1e-8), alpha) / np.power(np.maximum(wmax, 1e-8), 1 - alpha)", "    s = np.power(np.maximum(xmax, 1e-8), 1 - alpha) / np.power(np.maximum(wmax, 1e-8), alpha)", ("tests/test_guards.py", "tests/test_smoothquant.py")),
    M("smoothquant weights not scaled", "passes/smoothquant.py", "(w * s[:, None]).astype(np.float32)", "w.astype(np.float32)", ("tests/test_smoothquant.py",)),
    M("subgraph weights skipped", "passes/_subgraph_weights.py", "        if idx is None or len(node.input) <= idx or node.input[idx] not in consts:", "        if True:", ("tests/test_subgraph_weights.py",)),
    M("adaround zeta 1.0", "passes/_adaround_opt.py", "ZETA = 1.1", "ZETA = 1.0", ("tests/test_guards.py", "tests/test_adaround_ops.py")),
    M("exclusion names unchecked", "onnxq/quantize/calibration.py", "    if unknown:\n        close = difflib", "    if False:\n        close = difflib", ("tests/test_feeds.py",)),
    # --- measurement
    M("agreement on axis 1", "onnxq/measure/metrics.py", "out_c.argmax(axis=-1) == ref_c.argmax(axis=-1)", "out_c.argmax(axis=1) == ref_c.argmax(axis=1)", ("tests/test_guards.py", "tests/test_evaluate.py")),
    M("warm-up skipped", "onnxq/measure/timing.py", "        for _ in range(runs):\n            call()", "        for _ in range(0):\n            call()", ("tests/test_guards.py", "tests/test_bench.py")),
]  # fmt: skip


def run_tests(tests: tuple[str, ...]) -> bool:
    """True when the tests pass (the mutant survived)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--deselect",
           "tests/test_golden_quantize.py", *tests]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the mutants whose name contains this")
    args = parser.parse_args()
    results: list[tuple[Mutant, str, float]] = []
    for m in (m for m in MUTANTS if args.only in m.name):
        path = REPO / m.path
        original = path.read_text()
        if original.count(m.old) != 1:
            results.append((m, "stale", 0.0))
            continue
        start = time.perf_counter()
        try:
            path.write_text(original.replace(m.old, m.new))
            outcome = "survived" if run_tests(m.tests) else "killed"
        finally:
            path.write_text(original)
        results.append((m, outcome, time.perf_counter() - start))
        print(f"{outcome:8} {m.name} ({results[-1][2]:.1f} s)", flush=True)
    write(results, " ".join(["python", *sys.argv]))


def write(results, command: str) -> None:
    by_module: dict[str, list[str]] = defaultdict(list)
    for m, outcome, _ in results:
        by_module[m.path].append(outcome)
    live = [(m, o) for m, o, _ in results if o != "stale"]
    killed = sum(o == "killed" for _, o in live)
    lines = ["# Mutation run: one-line mistakes in onnxq/ and passes/ against the tests", "",
             f"- machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}",
             f"- command: `{command}`; each mutant runs the test files listed for it (`-x`), the golden test left out",
             f"- killed: {killed} of {len(live)} ({100 * killed / max(1, len(live)):.0f}%); stale (snippet gone): "
             f"{sum(o == 'stale' for _, o, _ in results)}", "",
             "| module | mutants | killed | survived |", "| --- | --- | --- | --- |"]  # fmt: skip
    for path, outcomes in sorted(by_module.items()):
        lines.append(f"| {path} | {len(outcomes)} | {outcomes.count('killed')} | {outcomes.count('survived')} |")
    lines += ["", "| mutant | module | outcome | tests | seconds |", "| --- | --- | --- | --- | --- |"]
    for m, outcome, seconds in results:
        lines.append(f"| {m.name} | {m.path} | {outcome} | {', '.join(m.tests)} | {seconds:.1f} |")
    path = REPO / "bench" / "results" / "mutation.md"
    path.write_text("\n".join(lines) + "\n")
    print(path)


if __name__ == "__main__":
    main()
