"""A report as one self-contained HTML page: inline CSS, tables, inline SVG plots, no scripts, no links out.

Every string from the report goes through ``html.escape`` (model names and paths are user input).
"""

from __future__ import annotations

from html import escape
from typing import Any

from onnxq.report.quantize_tables import quantize_tables
from onnxq.report.svg import accuracy_latency_plot, latency_plot
from onnxq.report.tables import (
    BENCH_TABLE_NOTE,
    Table,
    accuracy_table,
    bench_table,
    bench_warnings,
    environment_table,
    fidelity_table,
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }
td { white-space: nowrap; } table.text td { white-space: normal; } div.wide { overflow-x: auto; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
h3 { font-size: 1.05rem; margin-top: 1.2rem; } p.note { color: #555; font-size: 0.85rem; max-width: 60rem; }
.meta { color: #555; } code, pre { background: #f4f4f4; padding: 0.1rem 0.3rem; }
pre { padding: 0.6rem; overflow-x: auto; } svg.plot { max-width: 100%; height: auto; display: block; }
svg.plot text { font-family: inherit; fill: #222; } .legend { fill: #555; }
ul.warnings li { color: #8a4b00; } table.text td, table.text th { text-align: left; }
"""


def render_html(report: dict[str, Any]) -> str:
    """The page for a report dict (schema onnxq.report/1)."""
    bench, evals = report.get("bench") or [], report.get("eval") or []
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>onnxq report {escape(report['created'])}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>onnxq report</h1>",
        f'<p class="meta">Created {escape(report["created"])} by onnxq {escape(report["onnxq_version"])}.'
        + (f" Command: <code>{escape(' '.join(report['command']))}</code>" if report.get("command") else "")
        + "</p>",
    ]
    if bench:
        parts += [
            "<h2>Benchmark</h2>",
            _table(bench_table(bench)),
            f'<p class="note">{escape(BENCH_TABLE_NOTE)}</p>',
        ]
        warnings = bench_warnings(bench)
        if warnings:
            parts.append(
                '<ul class="warnings">' + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul>"
            )
        parts += ["<h2>Latency distribution</h2>", latency_plot(bench)]
    if evals:
        parts += ["<h2>Accuracy</h2>", _table(accuracy_table(evals))]
        warnings = bench_warnings(evals)  # the same "model · ep: text" labels serve eval entries
        if warnings:
            parts.append('<ul class="warnings">' + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul>")
        headers, rows = fidelity_table(evals)
        if rows:
            parts += ["<h2>Fidelity against the reference</h2>", _table((headers, rows))]
    if bench and evals:
        parts += ["<h2>Accuracy, latency and size</h2>", accuracy_latency_plot(bench, evals)]
    if report.get("quantize") is not None:
        parts += ["<h2>Quantization</h2>", *_quantize_section(report["quantize"])]
    if report.get("environment"):
        parts += ["<h2>Environment</h2>", _table(environment_table(report["environment"]), cls="text")]
    if report.get("notes"):
        parts += [
            "<h2>Notes</h2>",
            "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report["notes"]) + "</ul>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _quantize_section(summary: dict[str, Any]) -> list[str]:
    """The quantize summary's tables, each under its caption, then its warnings."""
    parts = []
    for caption, table in quantize_tables(summary):
        parts += [f"<h3>{escape(caption)}</h3>", _table(table, cls="text")]
    if summary.get("warnings"):
        parts.append('<ul class="warnings">' + "".join(f"<li>{escape(w)}</li>" for w in summary["warnings"]) + "</ul>")
    return parts


def _table(table: Table, cls: str = "") -> str:
    """Cells right-aligned (numbers) except the first column; ``cls="text"`` aligns all left."""
    headers, rows = table
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    # a table wider than the page scrolls inside its own box, not the whole page
    return f'<div class="wide"><table{attr}><thead>{head}</thead><tbody>{body}</tbody></table></div>'
