"""Markdown and HTML (inline SVG plots, no script) of an ``onnxq analyze`` report."""

from __future__ import annotations

import html
from typing import Any


def _db(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def node_table(report: dict[str, Any], limit: int | None = None) -> list[str]:
    """The nodes, most costly first (the largest gain when left float), as a Markdown table."""
    full = report["sqnr_db"]
    rows = sorted(report["nodes"], key=lambda r: -((r["sqnr_db_when_left_float"] or -1e9) - (full or 0)))
    lines = ["| node | op | SQNR left float (dB) | quantized alone | weight alone | activations alone |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows[:limit]:
        lines.append(f"| {r['node']} | {r['op_type']} | {_db(r['sqnr_db_when_left_float'])} | "
                     f"{_db(r.get('sqnr_db_quantized_alone'))} | {_db(r.get('sqnr_db_weight_alone'))} | "
                     f"{_db(r.get('sqnr_db_activations_alone'))} |")  # fmt: skip
    return lines


def render_analysis_markdown(report: dict[str, Any]) -> str:
    lines = [f"# onnxq analyze: {report['model']}", "",
             f"Worst output SQNR of the quantized model: {_db(report['sqnr_db'])} dB, on {report['measured_on']}.",
             "", "## What matters most", "", *[f"- {a}" for a in report["advice"]], "",
             "## Per quantized node", "", *node_table(report), "", "## Along the graph", "",
             "| tensor | SQNR dB |", "| --- | --- |",
             *[f"| {r['tensor']} | {_db(r['sqnr_db'])} |" for r in report["along_graph"]], "",
             "## Activation tensors: the range and error of each method", "",
             "| tensor | outlier ratio | " + " | ".join(f"{m} dB" for m in _methods(report)) + " |",
             "| --- | --- |" + " --- |" * len(_methods(report))]  # fmt: skip
    for r in report["tensors"]:
        cells = " | ".join(_db(r["methods"].get(m, {}).get("sqnr_db")) for m in _methods(report))
        ratio = "-" if r["outlier_ratio"] is None else f"{r['outlier_ratio']:.1f}"
        lines.append(f"| {r['tensor']} | {ratio} | {cells} |")
    return "\n".join(lines) + "\n"


def _methods(report: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(m for r in report["tensors"] for m in r["methods"]))


def _bars(values: list[tuple[str, float | None]], title: str, floor: float | None) -> str:
    """A horizontal bar chart (SVG) of dB values; a line at ``floor`` (the full model's SQNR)."""
    known = [v for _, v in values if v is not None]
    top = max(known + [floor or 0, 1.0])
    width, row = 640, 16
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 260}" height="{row * len(values) + 30}" '
             f'role="img" aria-label="{html.escape(title)}"><text x="0" y="12" font-size="12">{html.escape(title)}'
             "</text>"]  # fmt: skip
    for i, (label, v) in enumerate(values):
        y = 20 + i * row
        w = 0 if v is None or v < 0 else v / top * width
        parts.append(f'<text x="0" y="{y + 11}" font-size="10">{html.escape(label[-40:])}</text>'
                     f'<rect x="250" y="{y}" width="{w:.1f}" height="{row - 3}" fill="#4a7bb7"/>'
                     f'<text x="{255 + w:.1f}" y="{y + 11}" font-size="10">{_db(v)}</text>')  # fmt: skip
    if floor is not None and floor > 0:
        x = 250 + floor / top * width
        parts.append(f'<line x1="{x:.1f}" y1="18" x2="{x:.1f}" y2="{20 + row * len(values)}" stroke="#c33"/>')
    return "".join(parts) + "</svg>"


def render_analysis_html(report: dict[str, Any]) -> str:
    full = report["sqnr_db"]
    nodes = sorted(report["nodes"], key=lambda r: -(r["sqnr_db_when_left_float"] or -1e9))
    bars = _bars([(r["node"], r["sqnr_db_when_left_float"]) for r in nodes],
                 "output SQNR (dB) with this node left float; red: the full quantized model", full)  # fmt: skip
    curve = _bars([(r["tensor"], r["sqnr_db"]) for r in report["along_graph"]],
                  "SQNR (dB) of each activation tensor of the quantized model, in graph order", None)  # fmt: skip
    advice_items = "".join(f"<li>{html.escape(a)}</li>" for a in report["advice"])
    body = html.escape(render_analysis_markdown(report))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>onnxq analyze</title></head><body>"
            f"<h1>onnxq analyze: {html.escape(report['model'])}</h1><p>Worst output SQNR {_db(full)} dB on "
            f"{html.escape(report['measured_on'])}.</p><h2>What matters most</h2><ul>{advice_items}</ul>"
            f"<h2>Per node</h2>{bars}<h2>Along the graph</h2>{curve}<h2>Tables</h2><pre>{body}</pre>"
            "</body></html>\n")  # fmt: skip
