"""A report as Markdown: tables for people (benchmark, accuracy, fidelity, quantization, environment), plus
notes; the same tables as the HTML page."""

from __future__ import annotations

from typing import Any

from onnxq.report.quantize_tables import quantize_tables
from onnxq.report.tables import (
    BENCH_TABLE_NOTE,
    Table,
    accuracy_table,
    bench_table,
    bench_warnings,
    environment_table,
    fidelity_table,
)


def render_markdown(report: dict[str, Any]) -> str:
    """GitHub-flavoured Markdown of a report dict (schema onnxq.report/1)."""
    lines = ["# onnxq report", ""]
    lines.append(f"Created {report['created']} by onnxq {report['onnxq_version']}.")
    if report.get("command"):
        lines.append(f"Command: `{_code(' '.join(report['command']))}`")
    lines.append("")
    bench, evals = report.get("bench") or [], report.get("eval") or []
    if bench:
        lines += [
            "## Benchmark",
            "",
            *_table(bench_table(bench)),
            "",
            BENCH_TABLE_NOTE,
            "",
        ]
        warnings = bench_warnings(bench)
        if warnings:
            lines += ["Warnings:", "", *[f"- {_cell(w)}" for w in warnings], ""]
    if evals:
        lines += ["## Accuracy", "", *_table(accuracy_table(evals)), ""]
        warnings = bench_warnings(evals)  # the same "model · ep: text" labels serve eval entries
        if warnings:
            lines += ["Warnings:", "", *[f"- {_cell(w)}" for w in warnings], ""]
        headers, rows = fidelity_table(evals)
        if rows:
            lines += ["## Fidelity against the reference", "", *_table((headers, rows)), ""]
    if report.get("quantize") is not None:
        lines += ["## Quantization", "", *_quantize_section(report["quantize"])]
    if report.get("environment"):
        lines += ["## Environment", "", *_table(environment_table(report["environment"])), ""]
    if report.get("notes"):
        lines += ["## Notes", "", *[f"- {_cell(n)}" for n in report["notes"]], ""]
    return "\n".join(lines)


def _quantize_section(summary: dict[str, Any]) -> list[str]:
    """The quantize summary's tables, each under its caption, then its warnings."""
    lines = []
    for caption, table in quantize_tables(summary):
        lines += [f"### {caption}", "", *_table(table), ""]
    if summary.get("warnings"):
        lines += ["Warnings:", "", *[f"- {_cell(w)}" for w in summary["warnings"]], ""]
    return lines


def _table(table: Table) -> list[str]:
    headers, rows = table
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _cell(text: str) -> str:
    """A table cell on one line; a bare | would end the cell early."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    return text.replace("`", "'")
