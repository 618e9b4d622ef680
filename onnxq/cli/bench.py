"""``onnxq bench``: latency, throughput and memory of one or more models on one or more EPs."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from onnxq.cli.ep_flags import ep_option_flags
from onnxq.errors import ConfigError
from onnxq.runtime.eps import EP_NAMES


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--ep",
    "eps",
    multiple=True,
    default=("cpu",),
    show_default=True,
    help=f"Execution provider: {', '.join(EP_NAMES)}; repeat to measure several.",
)
@click.option(
    "--batch",
    "batches",
    multiple=True,
    type=int,
    help="Batch size; repeat for several (default: the model's fixed batch, the --shape's, or 1).",
)
@click.option("--threads", type=int, help="Intra-op threads (default: ORT's, one per physical core).")
@click.option("--warmup", type=int, help="Untimed runs per model before timing [default: 10].")
@click.option("--warmup-time", type=float, help="Warm up for this many seconds per model instead.")
@click.option("--runs", type=int, help="Timed rounds; each round runs every model once [default: 100].")
@click.option("--duration", type=float, help="Time rounds for this many seconds instead of --runs.")
@click.option("--io-binding", is_flag=True, help="Bind inputs and outputs on the device; run_with_iobinding.")
@click.option(
    "--data", type=click.Path(), help="Inputs from data (.npz, .npy, folder); the first batch is used."
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME:D0,D1,...",
    help="Shape of a random input with dynamic dims, e.g. x:1,3,224,224 (axis 0 follows --batch).",
)
@click.option("--allow-fallback", is_flag=True, help="Measure even when nodes fall back to another EP.")
@click.option(
    "--opt-level",
    type=click.Choice(["disable", "basic", "extended", "all"]),
    default="all",
    show_default=True,
    help="ORT graph optimization level.",
)
@click.option("--device-id", type=int, default=0, show_default=True, help="GPU index for the GPU EPs.")
@ep_option_flags(("cuda", "tensorrt"))
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Also write a report: .json, .md or .html by the suffix.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON instead of a table.")
def bench_cmd(models, report_path, as_json, **options):
    """Measure MODELS (several: interleaved run by run, speedups against the first) on each --ep."""
    from onnxq.measure.bench import run_bench

    if report_path:
        from onnxq.report.document import check_report_path

        # fail before the measurements, not after them
        inputs = [*(("a measured model", m) for m in models), ("the data", options.get("data"))]
        check_report_path(report_path, inputs=inputs)
    result = run_bench(models, bench_config(**options))
    if report_path:
        from onnxq.report.document import build_report, write_report

        document = build_report(bench=result["bench"], environment=result["environment"],
                                command=["onnxq", *sys.argv[1:]])  # fmt: skip
        write_report(report_path, document)
    click.echo(json.dumps(result, indent=2) if as_json else format_bench(result))
    if report_path and not as_json:
        click.echo(f"report written to {report_path}")


def bench_config(*, eps, batches, warmup, warmup_time, runs, duration, shapes, opt_level, **same):
    """The BenchConfig of the command's flags; the flags named as BenchConfig's fields pass through."""
    from onnxq.measure.bench import BenchConfig

    if warmup is not None and warmup_time is not None:
        raise ConfigError("--warmup and --warmup-time were both given", hint="give one of them")
    if runs is not None and duration is not None:
        raise ConfigError("--runs and --duration were both given", hint="give one of them")
    return BenchConfig(
        eps=tuple(eps),
        batches=tuple(batches) or (None,),
        warmup_runs=10 if warmup is None else warmup,
        warmup_s=warmup_time,
        runs=100 if runs is None else runs,
        duration_s=duration,
        shapes=parse_shapes(shapes),
        graph_optimization_level=opt_level,
        **same,  # threads, io_binding, data, allow_fallback, device_id, and the EP options (ep_flags.py)
    )


def parse_shapes(items: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``("x:1,3,224,224", ...)`` -> ``{"x": (1, 3, 224, 224)}``; ConfigError on a malformed item."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
        except ValueError:
            shape = None
        if not sep or not name or shape is None or any(d < 1 for d in shape):
            raise ConfigError(
                f"--shape {item!r} is not NAME:D0,D1,... with positive integer dims",
                hint="e.g. --shape input:1,3,224,224",
            )
        if name in shapes:
            raise ConfigError(f"--shape gives input {name!r} twice", hint="give each input once")
        shapes[name] = shape
    return shapes


def format_bench(result: dict[str, Any]) -> str:
    """The human table: one row per (model, EP, batch), then warnings and the environment."""
    from onnxq.report.environment import describe_environment
    from onnxq.report.tables import MISSING, ep_options_text, fmt_bytes, fmt_num

    headers = [
        "model",
        "ep",
        "batch",
        "p50 ms",
        "mean±std ms",
        "p90 ms",
        "p99 ms",
        "samples/s",
        "speedup",
        "create s",
        "1st run s",
        "peak RSS",
        "nodes per EP",
    ]
    rows = []
    for e in result["bench"]:
        lat = e["latency_ms"]
        speedup = e["speedup_vs_first"]
        rows.append(
            [
                e["model"],
                e["ep"],
                str(e["batch"]),
                fmt_num(lat["p50"]),
                f"{fmt_num(lat['mean'])}±{fmt_num(lat['std'])}",
                fmt_num(lat["p90"]),
                fmt_num(lat["p99"]),
                fmt_num(e["throughput_per_s"]),
                MISSING if speedup is None else f"{speedup:.2f}x",
                fmt_num(e["session_create_s"]),
                fmt_num(e["first_run_s"]),
                fmt_bytes(e["peak_rss_bytes"]),
                ", ".join(f"{ep.removesuffix('ExecutionProvider')} {n}" for ep, n in e["ep_nodes"].items()),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    runs = sorted({e["runs"] for e in result["bench"]})
    lines.append(
        f"({'/'.join(map(str, runs))} timed runs each; models interleaved run by run; "
        "speedup = p50 of the first model / p50)"
    )
    for e in result["bench"]:
        options = ep_options_text(e, reasons=True)
        if options:
            lines.append(f"ep options: {e['model']} on {e['ep']}, batch {e['batch']}: {options}")
    for e in result["bench"]:
        lines += [f"warning: {e['model']} on {e['ep']}, batch {e['batch']}: {w}" for w in e["warnings"]]
    lines.append(f"environment: {describe_environment(result['environment'])}")
    return "\n".join(lines)
