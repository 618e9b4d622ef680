"""Rendering of a :class:`~onnxq.lint.check.LintReport`: the ``onnxq.lint/1`` JSON document (schema in
``onnxq/report/schemas/lint.schema.json``) and the text table ``onnxq lint`` prints by default."""

from __future__ import annotations

from typing import Any

from onnxq.inspect.render import format_table
from onnxq.lint.check import LintReport

SCHEMA_ID = "onnxq.lint/1"


def report_to_json(report: LintReport) -> dict[str, Any]:
    """The ``onnxq.lint/1`` document: plain JSON types, ``"schema"`` first."""
    return {
        "schema": SCHEMA_ID,
        "model": report.path,
        "target": report.target,
        "passed": report.passed,
        "summary": {
            "errors": report.errors,
            "warnings": report.warnings,
            "qdq_nodes": report.qdq_nodes,
            "graphs": report.graphs,
            "by_rule": report.by_rule(),
        },
        "rules": [{"id": r.id, "severity": r.severity, "statement": r.statement, "fix": r.fix} for r in report.rules],
        "violations": [
            {
                "graph": v.graph,
                "node": v.node,
                "rule": v.rule,
                "severity": v.severity,
                "message": v.message,
                "fix": v.fix,
            }
            for v in report.violations
        ],  # fmt: skip
    }


def summary_line(report: LintReport) -> str:
    """``tensorrt: passed, 0 errors, 26 warnings in 86 Q/DQ nodes (1 graph)``."""
    verdict = "passed" if report.passed else "FAILED"
    graphs = f"{report.graphs} graph{'s' if report.graphs != 1 else ''}"
    return (f"{report.target}: {verdict}, {report.errors} errors, {report.warnings} warnings in "
            f"{report.qdq_nodes} Q/DQ nodes ({graphs})")  # fmt: skip


def render_text(report: LintReport) -> str:
    """The violations as a table (node, rule, severity, message, fix), the rules that found them, a summary."""
    lines = [f"model   {report.path or '(in memory)'}", f"target  {report.target} ({len(report.rules)} rules)", ""]
    if report.violations:
        in_subgraph = any(v.graph != "main" for v in report.violations)
        headers = ["graph"] * in_subgraph + ["node", "rule", "severity", "message", "fix"]
        rows = [[v.graph] * in_subgraph + [v.node, v.rule, v.severity, v.message, v.fix] for v in report.violations]
        lines += ["violations", *format_table(headers, rows), ""]
        found = report.by_rule()
        rule_rows = [[r.id, r.severity, found[r.id], r.statement] for r in report.rules if r.id in found]
        lines += ["by rule", *format_table(["rule", "severity", "found", "what the target needs"], rule_rows), ""]
    else:
        lines += ["violations: none", ""]
    lines.append(summary_line(report))
    return "\n".join(lines)
