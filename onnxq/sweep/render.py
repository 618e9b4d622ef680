"""The sweep report as a self-contained HTML page (sortable table, Pareto plots) and as Markdown.

Both read the same columns, formatted once (:data:`COLUMNS`). The HTML page has inline CSS, inline SVG and
one small inline script that sorts the results table when a header is clicked (numbers by value, blanks
last); nothing is loaded from elsewhere, and every string from the report is escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from onnxq.report.html import CSS
from onnxq.report.html import _table as html_table
from onnxq.report.markdown import _cell as md_cell
from onnxq.report.markdown import _table as md_table
from onnxq.report.tables import MISSING, environment_table, fmt_bytes, fmt_num, fmt_pct
from onnxq.sweep.pareto import pareto_plot
from onnxq.sweep.spec import FLOAT


def _ratio(x: float | None) -> str:
    return MISSING if x is None else f"{x:.2f}x"


def _pp(x: float | None) -> str:
    return MISSING if x is None else f"{100 * x:+.2f} pp"


def _text(x: Any) -> str:
    return MISSING if x is None else str(x)


def _value(x: Any) -> str:
    return fmt_num(x) if isinstance(x, float) else _text(x)


def _target(row: dict[str, Any]) -> str:
    if "target_misses" not in row:
        return MISSING
    return "meets" if not row["target_misses"] else "misses: " + "; ".join(row["target_misses"])


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any], Callable[[Any], str]]] = [
    ("model", lambda r: r["model"], _text),
    ("recipe", lambda r: r["recipe"], _text),
    ("EP", lambda r: r["ep"], _text),
    ("batch", lambda r: r["batch"], _text),
    ("status", lambda r: r["status"], _text),
    ("size", lambda r: r["size_bytes"], fmt_bytes),
    ("smaller", lambda r: r["size_ratio"], _ratio),
    ("top-1", lambda r: r["top1"], fmt_pct),
    ("top-1 drop", lambda r: r["top1_drop"], _pp),
    ("agreement", lambda r: r["agreement"], fmt_pct),
    ("SQNR dB", lambda r: r["sqnr_db"], fmt_num),
    ("p50 ms", lambda r: r["p50_ms"], fmt_num),
    ("p90 ms", lambda r: r["p90_ms"], fmt_num),
    ("speedup", lambda r: r["speedup_vs_float"], _ratio),
    ("quantize s", lambda r: r["quantize_s"], fmt_num),
    ("Pareto", lambda r: "yes" if r.get("pareto") else "", str),
    ("target", lambda r: r, _target),
    ("bench node", lambda r: (r.get("nodes") or {}).get("bench"), _text),
]

SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, i) {
  th.style.cursor = "pointer";
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var dir = th.dataset.dir === "asc" ? -1 : 1; th.dataset.dir = dir === 1 ? "asc" : "desc";
    function key(r) { var c = r.cells[i]; return c.dataset.v === undefined ? c.textContent : c.dataset.v; }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      if (a.cells[i].dataset.v !== undefined) {
        if (isNaN(nx)) return 1; if (isNaN(ny)) return -1; return dir * (nx - ny);
      }
      return dir * x.localeCompare(y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""
EXTRA_CSS = (
    "tr.pareto td { font-weight: 600; } tr.failed td { color: #a00; } th { user-select: none; } "
    "div.scroll { overflow-x: auto; } h3 { font-size: 1rem; margin: 1.2rem 0 0.2rem; }"
)


def _cells(row: dict[str, Any]) -> list[tuple[str, Any]]:
    """(shown text, raw value) per column."""
    return [(fmt(get(row)), get(row)) for _, get, fmt in COLUMNS]


def render_sweep_html(report: dict[str, Any]) -> str:
    """The page for a sweep report dict (schema onnxq.sweep/1)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>onnxq sweep {escape(report['created'])}</title>",
             f"<style>{CSS}{EXTRA_CSS}</style></head><body>", "<h1>onnxq sweep</h1>",
             f'<p class="meta">{escape(_meta_line(report))}</p>']  # fmt: skip
    if report["winners"]:
        parts += ["<h2>Winners under the target</h2>", f"<p>{escape(_target_line(report))}</p>",
                  html_table(_winners_table(report))]  # fmt: skip
    parts += ["<h2>Results</h2>", "<p>Click a header to sort. Ratios and drops are against the float model "
              "on the same EP and batch.</p>", _results_html(report["results"])]  # fmt: skip
    parts += ["<h2>Fidelity against latency</h2>", *_plots(report)]
    failures = _failures(report)
    if failures:
        parts += ["<h2>Failures</h2>", "<ul class=\"warnings\">" + "".join(f"<li>{escape(f)}</li>" for f in failures)
                  + "</ul>"]  # fmt: skip
    parts += ["<h2>Where tasks ran</h2>", html_table(_nodes_table(report))]
    parts += ["<h2>Environment (driver)</h2>", html_table(environment_table(report["environment"]), cls="text")]
    parts += [f"<script>{SORT_SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _meta_line(report: dict[str, Any]) -> str:
    s, ex = report["summary"], report["executor"]
    nodes = ", ".join(f"{n['host']} ({n['slots']} slots)" for n in ex.get("nodes", []))
    executed = ", ".join(f"{k} {v}" for k, v in s["executed"].items())
    return (f"Created {report['created']} by onnxq {report['onnxq_version']} from {report['spec']['source']}; "
            f"executor {ex['kind']} on {nodes}; {report['wall_s']:.1f} s. {s['cells']} cells: {s['done']} done, "
            f"{s['failed']} failed; {s['tasks']} tasks, {s['cached']} from the cache, executed: {executed}; "
            f"{s['retried']} retried.")  # fmt: skip


def _target_line(report: dict[str, Any]) -> str:
    target = report["spec"]["target"] or {}
    given = ", ".join(f"{k} {v}" for k, v in target.items() if v is not None and k != "optimize")
    return f"Target: {given or 'no constraint'}; optimize {target.get('optimize')}."


def _winners_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [[w["model"], w["ep"], _text(w["batch"]), w["recipe"] or "none", _value(w["value"]), w.get("reason", "")]
            for w in report["winners"]]  # fmt: skip
    return ["model", "EP", "batch", "winner", "value", "why"], rows


def _results_html(rows: list[dict[str, Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h, _, _ in COLUMNS) + "</tr>"
    body = []
    for r in rows:
        cls = "pareto" if r.get("pareto") else "failed" if r["status"] == "failed" else ""
        tds = "".join(f'<td data-v="{"" if v is None else escape(str(v))}">{escape(t)}</td>'
                      if isinstance(v, (int, float)) or v is None else f"<td>{escape(t)}</td>"
                      for t, v in _cells(r))  # fmt: skip
        body.append(f'<tr class="{cls}">{tds}</tr>')
    table = f'<table class="sortable"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def _groups(report: dict[str, Any]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in report["results"]:
        groups.setdefault((r["model"], r["ep"], r["batch"]), []).append(r)
    return groups


def _plots(report: dict[str, Any]) -> list[str]:
    winners = {(w["model"], w["ep"], w["batch"]): w["recipe"] for w in report["winners"]}
    out = []
    for key, group in _groups(report).items():
        base = next((r for r in group if r["recipe"] == FLOAT), None)
        out.append(f"<h3>{escape(key[0])} · {escape(key[1])} · batch {escape(str(key[2]))}</h3>")
        out.append(pareto_plot([r for r in group if r["recipe"] != FLOAT], base and base["p50_ms"], winners.get(key)))
    return out


def _failures(report: dict[str, Any]) -> list[str]:
    return [f"{e['task']}: {e['error']}" + (f" (hint: {e['hint']})" if e.get("hint") else "")
            for c in report["cells"] for e in c["errors"] if not e["error"].startswith("skipped:")]  # fmt: skip


def _nodes_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Tasks per node and stage (executed here; cached tasks keep the node that ran them first)."""
    counts: dict[str, dict[str, int]] = {}
    for c in report["cells"]:
        for t in c["tasks"]:
            if t["node"] and not t["cached"]:
                counts.setdefault(t["node"], {}).setdefault(t["stage"], 0)
                counts[t["node"]][t["stage"]] += 1
    rows = [[node, *(str(by.get(stage, 0)) for stage in ("quantize", "eval", "bench"))] for node, by in counts.items()]
    return ["node", "quantize", "eval", "bench"], rows


def render_sweep_markdown(report: dict[str, Any]) -> str:
    """GitHub-flavoured Markdown: the summary line, winners, results, failures, where tasks ran."""
    lines = ["# onnxq sweep", "", _meta_line(report), ""]
    if report["winners"]:
        lines += ["## Winners under the target", "", _target_line(report), "", *md_table(_winners_table(report)), ""]
    results = [h for h, _, _ in COLUMNS], [[t for t, _ in _cells(r)] for r in report["results"]]
    lines += ["## Results", "", *md_table(results), ""]
    failures = _failures(report)
    if failures:
        lines += ["## Failures", "", *[f"- {md_cell(f)}" for f in failures], ""]
    lines += ["## Where tasks ran", "", *md_table(_nodes_table(report)), ""]
    return "\n".join(lines)
