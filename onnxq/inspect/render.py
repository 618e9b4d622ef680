"""Rendering of an :class:`~onnxq.inspect.facts.InspectReport`: the ``onnxq.inspect/1`` JSON document (schema in
``onnxq/report/schemas/inspect.schema.json``) and the aligned text tables ``onnxq inspect`` prints by default."""

from __future__ import annotations

from typing import Any

from onnxq.inspect.facts import InspectReport, QuantizableNode, StorageStats, ValueSummary

SCHEMA_ID = "onnxq.inspect/1"


def report_to_json(report: InspectReport) -> dict[str, Any]:
    """The ``onnxq.inspect/1`` document: plain JSON types, ``"schema"`` first."""
    return {
        "schema": SCHEMA_ID,
        "model": {
            "path": report.path,
            "file_bytes": report.file_bytes,
            "model_bytes": report.model_bytes,
            "ir_version": report.ir_version,
            "opset_imports": report.opset_imports,
            "producer": {"name": report.producer_name, "version": report.producer_version},
        },
        "inputs": [_value_json(v) for v in report.inputs],
        "outputs": [_value_json(v) for v in report.outputs],
        "nodes": {
            "total": report.total_nodes,
            "top_level": report.top_level_nodes,
            "in_subgraphs": report.subgraph_nodes,
            "by_op": report.op_counts,
            "subgraph_owners": [
                {"graph": s.graph, "name": s.name, "op_type": s.op_type, "attributes": list(s.attributes)}
                for s in report.subgraph_owners
            ],
        },
        "parameters": {
            "count": report.initializer_storage.parameters + report.constant_node_storage.parameters,
            "bytes": report.initializer_storage.bytes + report.constant_node_storage.bytes,
            "by_dtype": {k: _stats_json(v) for k, v in report.params_by_dtype.items()},
            "initializers": _stats_json(report.initializer_storage),
            "constant_nodes": _stats_json(report.constant_node_storage),
        },
        "quantizable": {
            "weight_nodes": [_quantizable_json(q) for q in report.quantizable],
            "weight_node_count": len(report.quantizable),
            "depthwise_count": report.depthwise_count,
            "activation_node_count": sum(report.activation_op_counts.values()),
            "activation_nodes_by_op": report.activation_op_counts,
        },
        "quantized": {"is_quantized": report.is_quantized, "ops": report.quantized_op_counts},
        "custom_ops": [
            {"domain": d, "op_type": o, "count": n} for (d, o), n in report.custom_op_counts.items()
        ],
        "warnings": list(report.warnings),
    }


def _value_json(value: ValueSummary) -> dict[str, Any]:
    return {
        "name": value.name,
        "dtype": value.dtype,
        "shape": None if value.shape is None else list(value.shape),
    }


def _stats_json(stats: StorageStats) -> dict[str, int]:
    return {"tensors": stats.tensors, "parameters": stats.parameters, "bytes": stats.bytes}


def _quantizable_json(q: QuantizableNode) -> dict[str, Any]:
    return {
        "graph": q.graph,
        "name": q.name,
        "op_type": q.op_type,
        "weight_input": q.weight_input,
        "weight": q.weight,
        "weight_shape": list(q.weight_shape),
        "weight_storage": q.weight_storage,
        "depthwise": q.depthwise,
    }


def format_shape(shape: tuple[int | str | None, ...] | None) -> str:
    """``[N, 3, 224, 224]``; unknown dims as ``?``, unknown rank as ``?``."""
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def format_table(headers: list[str], rows: list[list[Any]], indent: str = "  ") -> list[str]:
    """Left-aligned text columns, numbers right-aligned, under a header row."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return (indent + "  ".join(parts)).rstrip()

    return [line(headers), *(line(r) for r in cells)]


def render_text(report: InspectReport) -> str:
    """The human-readable report: a header block, then one aligned table per section."""
    size = f"{report.file_bytes:,} bytes on disk" if report.file_bytes is not None else "not on disk"
    opsets = ", ".join(f"{d} {v}" for d, v in report.opset_imports.items())
    producer = f"{report.producer_name} {report.producer_version}".strip() or "(none)"
    lines = [
        f"model       {report.path or '(in memory)'} ({size}, {report.model_bytes:,} bytes serialized)",
        f"IR version  {report.ir_version}",
        f"opsets      {opsets}",
        f"producer    {producer}",
        "",
        "inputs",
        *format_table(
            ["name", "dtype", "shape"], [[v.name, v.dtype, format_shape(v.shape)] for v in report.inputs]
        ),
        "outputs",
        *format_table(
            ["name", "dtype", "shape"], [[v.name, v.dtype, format_shape(v.shape)] for v in report.outputs]
        ),
        "",
        f"nodes: {report.total_nodes} ({report.top_level_nodes} top level, "
        f"{report.subgraph_nodes} in subgraphs)",
        *format_table(["op", "count"], [[op, n] for op, n in report.op_counts.items()]),
    ]
    if report.subgraph_owners:
        rows = [[s.graph, s.name, s.op_type, ", ".join(s.attributes)] for s in report.subgraph_owners]
        lines += ["", "subgraphs", *format_table(["graph", "node", "op", "attributes"], rows)]
    lines += ["", *_parameter_lines(report), "", *_quantizable_lines(report), ""]
    if report.is_quantized:
        listed = ", ".join(f"{op} {n}" for op, n in report.quantized_op_counts.items())
        lines.append(f"already quantized: yes ({listed})")
    else:
        lines.append("already quantized: no")
    if report.custom_op_counts:
        rows = [[d, o, n] for (d, o), n in report.custom_op_counts.items()]
        lines += ["custom-domain ops", *format_table(["domain", "op", "count"], rows)]
    else:
        lines.append("custom-domain ops: none")
    lines += ["", "warnings" if report.warnings else "warnings: none", *(f"  - {w}" for w in report.warnings)]
    return "\n".join(lines)


def _parameter_lines(report: InspectReport) -> list[str]:
    init, const = report.initializer_storage, report.constant_node_storage
    total = init.parameters + const.parameters
    rows = [[k, s.tensors, s.parameters, s.bytes] for k, s in report.params_by_dtype.items()]
    rows += [
        [f"({what})", s.tensors, s.parameters, s.bytes]
        for what, s in (("initializers", init), ("Constant nodes", const))
    ]
    return [
        f"parameters: {total:,} ({init.bytes + const.bytes:,} bytes)",
        *format_table(["dtype / storage", "tensors", "parameters", "bytes"], rows),
    ]


def _quantizable_lines(report: InspectReport) -> list[str]:
    acts = sum(report.activation_op_counts.values())
    lines = [
        f"quantizable: {len(report.quantizable)} weight nodes ({report.depthwise_count} depthwise), "
        f"{acts} activation-op nodes"
    ]
    if report.quantizable:
        # The graph column appears only when some weight node sits inside a subgraph.
        in_subgraph = any(q.graph != "main" for q in report.quantizable)
        headers = ["graph"] * in_subgraph + ["node", "op", "input", "weight shape", "storage", "depthwise"]
        rows = [
            [q.graph] * in_subgraph
            + [
                q.name,
                q.op_type,
                q.weight_input,
                format_shape(q.weight_shape),
                q.weight_storage,
                "yes" if q.depthwise else "",
            ]
            for q in report.quantizable
        ]
        lines += format_table(headers, rows)
    if report.activation_op_counts:
        lines += format_table(
            ["activation op", "count"], [[op, n] for op, n in report.activation_op_counts.items()]
        )
    return lines
