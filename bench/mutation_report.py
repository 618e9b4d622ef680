"""bench/results/mutation.md from a run of bench/mutation.py: totals, kill rate per module, survivors,
equivalents, the README's safety promises with the mutants that break them and the tests that catch them."""

from __future__ import annotations

import datetime as dt
import platform
import re
from collections import defaultdict
from pathlib import Path


def _machine() -> list[str]:
    import numpy
    import onnx
    import onnxruntime

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    import os

    return [
        f"- machine: {cpu}, {os.cpu_count()} cores (shared with other jobs), {platform.system()} {platform.release()}",
        f"- versions: Python {platform.python_version()}, numpy {numpy.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def _totals(results) -> list[str]:
    n = defaultdict(int)
    for r in results:
        n[r.status] += 1
    live = n["killed"] + n["survived"]
    by_stage = sum(r.stage == 2 for r in results)
    return [
        f"- mutants: {len(results)}; killed {n['killed']}, survived {n['survived']}, equivalent {n['equivalent']}, "
        f"stale {n['stale']}, invalid {n['invalid']}",
        f"- kill rate of the non-equivalent mutants: {n['killed']} of {live} "
        f"({100 * n['killed'] / max(1, live):.1f}%); {by_stage} of them only by the whole suite (stage 2)",
    ]


def _per_module(results) -> list[str]:
    rows = defaultdict(lambda: defaultdict(int))
    for r in results:
        rows[r.mutant.path][r.status] += 1
    lines = ["| module | mutants | killed | survived | equivalent | kill rate |", "|" + " --- |" * 6]
    for path, n in sorted(rows.items()):
        live = n["killed"] + n["survived"]
        rate = f"{100 * n['killed'] / live:.0f}%" if live else "-"
        lines.append(f"| {path} | {sum(n.values())} | {n['killed']} | {n['survived']} | {n['equivalent']} | {rate} |")
    return lines


def _listed(results, status: str, why) -> list[str]:
    chosen = [r for r in results if r.status == status]
    return [f"- {r.mutant.name} ({r.mutant.path}): {why(r)}" for r in chosen] or ["- none"]


def _stale(results) -> list[str]:
    return [f"- {r.mutant.name} ({r.mutant.path}): {r.status}" for r in results
            if r.status in ("stale", "invalid")] or ["- none"]  # fmt: skip


def _promises(results, promises) -> list[str]:
    by_name = {r.mutant.name: r for r in results}
    lines = ["| promise (README) | mutant that breaks it | outcome | killed first by |", "| --- | --- | --- | --- |"]
    for promise, names in promises.items():
        for name in names:
            r = by_name.get(name)
            outcome, killer = (r.status, r.killer) if r else ("not run", "")
            lines.append(f"| {promise} | {name} | {outcome} | `{killer}` |")
    return lines


def _table(results) -> list[str]:
    count = any(r.failures is not None for r in results)
    head = "| mutant | module | outcome | killed first by |" + (" tests failed |" if count else "") + " seconds |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        failures = f" {r.failures if r.failures is not None else ''} |" if count else ""
        killer = f"`{r.killer}`" + (" (stage 2)" if r.stage == 2 else "") if r.killer else ""
        lines.append(f"| {r.mutant.name} | {r.mutant.path} | {r.status} | {killer} |{failures} {r.seconds:.1f} |")
    return lines


def write_report(results, command: str, seconds: float, repo: Path, promises) -> Path:
    lines = ["# Mutation run: one-line mistakes in onnxq/ and passes/ against the tests", "",
             f"- command: {command}; stage 1 runs each mutant's area of the suite, a "
             "survivor of it runs again on the whole suite without the env-gated golden test and the fuzz corpus",
             f"- run time: {seconds / 60:.1f} min on a shared machine (with --update: the earlier runs' and this one)",
             *_machine(), *_totals(results), "",
             "## Kill rate per module", "", *_per_module(results), "",
             "## Survivors", "", *_listed(results, "survived", lambda r: "no test fails"), "",
             "## Equivalent mutants (not run)", "", *_listed(results, "equivalent", lambda r: r.mutant.equivalent), "",
             "## Stale or invalid", "", *_stale(results), "",
             "## Safety promises and the tests that guard them", "",
             "Each promise of the README has mutants that break it; the test named is the first that failed.", "",
             *_promises(results, promises), "", "## Every mutant", "", *_table(results)]  # fmt: skip
    path = repo / "bench" / "results" / "mutation.md"
    path.write_text("\n".join(lines) + "\n")
    return path


_ROW = re.compile(
    r"^\| (?P<name>[^|]+?) \| (?P<path>\S+) \| (?P<status>\w+) \| (?P<killer>[^|]*?) \|"
    r"(?: [^|]* \|)? (?P<s>[\d.]+) \|$"
)


def previous_outcomes(repo: Path) -> dict[str, dict]:
    """The outcomes of the last run, read back from the "Every mutant" table of bench/results/mutation.md:
    {name: {status, stage, killer, seconds}} (empty when there is none)."""
    path = repo / "bench" / "results" / "mutation.md"
    if not path.is_file():
        return {}
    text = path.read_text()
    out = {}
    for line in text.split("## Every mutant", 1)[-1].splitlines():
        m = _ROW.match(line)
        if m and m["status"] in ("killed", "survived", "equivalent", "stale", "invalid"):
            killer = m["killer"].strip()
            stage = 2 if killer.endswith("(stage 2)") else (1 if m["status"] == "killed" else 0)
            killer = killer.removesuffix(" (stage 2)").strip("`")
            out[m["name"]] = {"status": m["status"], "stage": stage, "killer": killer, "seconds": float(m["s"])}
    return out


def previous_minutes(repo: Path) -> float:
    path = repo / "bench" / "results" / "mutation.md"
    m = re.search(r"- run time: ([\d.]+) min", path.read_text()) if path.is_file() else None
    return float(m.group(1)) if m else 0.0


def previous_command(repo: Path) -> str:
    """The "- command:" text of the last report (the commands that made it), as written there."""
    path = repo / "bench" / "results" / "mutation.md"
    m = re.search(r"^- command: (.*?); stage 1 runs", path.read_text(), re.M) if path.is_file() else None
    return m.group(1) if m else ""
