"""The tables of a report as plain text cells, shared by the Markdown and HTML renderers.

Each function returns ``(headers, rows)``; every cell is a str, unescaped (each renderer escapes for its
own format). Numbers are formatted here once, so both formats show the same digits.
"""

from __future__ import annotations

from typing import Any

from onnxq.cli.summary import human_bytes

Table = tuple[list[str], list[list[str]]]
MISSING = "–"  # an en dash: no value (not measured, or not applicable)


def fmt_num(x: float | None) -> str:
    """3 significant digits (at least), thousands separators, exponents only below 1e-4; MISSING for None."""
    if x is None:
        return MISSING
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    if ax == 0:
        return "0"
    return f"{x:.3g}"


def fmt_pct(x: float | None) -> str:
    """A fraction in [0, 1] as a percentage with two decimals (0.975 -> '97.50%')."""
    return MISSING if x is None else f"{100.0 * x:.2f}%"


def fmt_cos(x: float | None) -> str:
    """Cosine similarity with 6 decimals: the interesting ones differ from 1 in the 4th to 6th digit."""
    return MISSING if x is None else f"{x:.6f}"


def fmt_bytes(n: int | None) -> str:
    return MISSING if n is None else human_bytes(n)


def entry_label(entry: dict[str, Any]) -> str:
    """'model · ep · b32': how plots and tables name one bench entry."""
    label = f"{entry.get('model', '?')} · {entry.get('ep', '?')}"
    return label + (f" · b{entry['batch']}" if "batch" in entry else "")


# What the bench table's less obvious columns hold; both renderers print it under the table.
BENCH_TABLE_NOTE = (
    "Latency of one batch, in milliseconds; speedup: the first model's p50 over this one's, per EP and batch. "
    "Session RSS added: the process's peak resident memory while this model's session was created, run once "
    "and warmed up, minus its resident memory just before (memory the allocator already held and reused is "
    "not counted, so a small model can add almost nothing). Process peak RSS: the whole process's peak "
    "resident memory over that same time. Both are measured on Linux only (– elsewhere)."
)


def bench_table(bench: list[dict[str, Any]]) -> Table:
    headers = [
        "model",
        "EP",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "throughput /s",
        "speedup",
        "size",
        "session RSS added",
        "process peak RSS",
        "nodes per EP",
        "EP options",
    ]
    rows = []
    for e in bench:
        lat = e.get("latency_ms", {})
        speedup = e.get("speedup_vs_first")
        rows.append(
            [
                str(e.get("model", "")),
                str(e.get("ep", "")),
                str(e.get("batch", "")),
                fmt_num(lat.get("p50")),
                fmt_num(lat.get("p90")),
                fmt_num(lat.get("p99")),
                fmt_num(e.get("throughput_per_s")),
                MISSING if speedup is None else f"{speedup:.2f}x",
                fmt_bytes(e.get("size_bytes")),
                fmt_bytes(e.get("peak_rss_bytes")),
                fmt_bytes(e.get("process_peak_rss_bytes")),
                ", ".join(
                    f"{ep.removesuffix('ExecutionProvider')} {n}" for ep, n in e.get("ep_nodes", {}).items()
                ),
                ep_options_text(e) or MISSING,
            ]
        )
    return headers, rows


def ep_options_text(entry: dict[str, Any], *, reasons: bool = False) -> str:
    """'prefer_nhwc=1, enable_cuda_graph=1': the provider options an entry's EP got (device_id left out), with
    onnxq's reason for those it chose when ``reasons``."""
    why = entry.get("ep_option_reasons") or {}
    return ", ".join(
        f"{k}={v}" + (f" ({why[k]})" if reasons and k in why else "")
        for k, v in (entry.get("ep_options") or {}).items()
        if k != "device_id"
    )


def accuracy_table(evals: list[dict[str, Any]]) -> Table:
    headers = ["model", "EP", "samples", "top-1", "top-5", "labels"]
    rows = []
    for e in evals:
        acc = e.get("accuracy") or {}
        rows.append(
            [
                str(e.get("model", "")),
                str(e.get("ep", "")),
                str(e.get("samples", "")),
                fmt_pct(acc.get("top1")),
                fmt_pct(acc.get("top5")),
                acc.get("labels_key") or MISSING,
            ]
        )
    return headers, rows


def fidelity_table(evals: list[dict[str, Any]]) -> Table:
    headers = [
        "model",
        "reference",
        "output",
        "top-1 agreement",
        "SQNR dB",
        "cosine (mean per sample)",
        "cosine (overall)",
        "max abs error",
        "mean abs error",
        "min atol",
        "min rtol",
    ]
    rows = []
    for e in evals:
        fid = e.get("fidelity")
        if not fid:
            continue
        for o in fid["outputs"]:
            rows.append(
                [
                    str(e.get("model", "")),
                    str(fid.get("reference", "")),
                    str(o["name"]),
                    fmt_pct(o["top1_agreement"]),
                    _fmt_sqnr(o),
                    fmt_cos(o["cosine"]["mean_per_sample"]),
                    fmt_cos(o["cosine"]["overall"]),
                    fmt_num(o["max_abs_error"]),
                    fmt_num(o["mean_abs_error"]),
                    fmt_num(o["min_atol"]),
                    "none (ref is 0 where outputs differ)"
                    if o["min_rtol"] is None
                    else fmt_num(o["min_rtol"]),
                ]
            )
    return headers, rows


def _fmt_sqnr(o: dict[str, Any]) -> str:
    if o["sqnr_db"] is not None:
        return f"{o['sqnr_db']:.2f}"
    return "∞ (identical)" if o["max_abs_error"] == 0 else "undefined (reference is all zero)"


def environment_table(env: dict[str, Any]) -> Table:
    """One row per environment key: sizes in KiB/MiB/GiB, mappings as 'name value' pairs, lists joined."""
    return ["key", "value"], [[str(k), environment_value(k, v)] for k, v in env.items()]


def environment_value(key: str, value: Any) -> str:
    if value is None or value == []:
        return MISSING
    if key.endswith("_bytes") and isinstance(value, int):
        return fmt_bytes(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {environment_value(str(k), v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(environment_value(key, v) for v in value)
    return str(value)


def bench_warnings(bench: list[dict[str, Any]]) -> list[str]:
    """Every warning of the entries (bench or eval), prefixed with the entry it belongs to."""
    return [f"{entry_label(e)}: {w}" for e in bench for w in e.get("warnings", [])]
