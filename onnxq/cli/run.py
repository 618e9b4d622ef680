"""``onnxq run``: quantize, evaluate and benchmark in one go, and compare float with quantized."""

from __future__ import annotations

from pathlib import Path

import click

from onnxq.cli.ep_flags import ep_option_flags, given_ep_options
from onnxq.cli.flags import (
    POSITIVE_INT,
    allow_fallback_flag,
    echo_json,
    ep_flag,
    json_flag,
    report_flag,
    timing_fields,
    timing_options,
)
from onnxq.cli.quantize import quantize_options, recipe_from_flags

RUN_RUNS, RUN_WARMUP = 200, 20


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Where to write the QDQ model (default: ./<model>.qdq.onnx).",
)
@click.option(
    "--calib", required=True, type=click.Path(), help="Calibration data (.npz, .npy, folder of .npy)."
)
@click.option("--data", required=True, type=click.Path(), help="Evaluation data, with labels for accuracy.")
@click.option("--labels", "labels_key", help="Key of the label array in the evaluation .npz.")
@quantize_options
@ep_flag(several=False)
@allow_fallback_flag
@ep_option_flags(("cuda",), leave_out=("cuda_graph",))  # run evaluates and benchmarks with plain session.run
@timing_options(runs=RUN_RUNS, warmup=RUN_WARMUP)
@click.option(
    "--batch", type=POSITIVE_INT, metavar="N", help="Benchmark batch size (default: the model's fixed batch, or 1)."
)
@report_flag
@json_flag
@click.option("--progress/--no-progress", default=True, help="Show a calibration progress bar on a terminal.")
@click.option(
    "--verify", is_flag=True, help="Check at run time that float-preserving passes kept the outputs."
)
def run_cmd(model, output, calib, data, labels_key, recipe_file, ep, batch, report_path, as_json, progress, verify,
            **flags):  # fmt: skip
    """Quantize MODEL with --calib, then evaluate and benchmark float against quantized on --data."""
    from onnxq.quantize.driver import quantize

    output = output or str(Path.cwd() / (Path(model).stem + ".qdq.onnx"))
    _check_paths(model, output, calib, data, recipe_file, report_path)
    ep_options = given_ep_options(flags)
    timing = {k: flags.pop(k) for k in TIMING_FLAGS}
    bench_options = {k: flags.pop(k) for k in ("threads", "io_binding", "allow_fallback")}
    recipe = recipe_from_flags(recipe_file, flags)
    summary = quantize(model, output, calib, recipe, progress=progress, verify=verify)
    if not as_json:  # shown before the measurements start
        from onnxq.cli.summary import format_quantize_summary

        click.echo(format_quantize_summary(summary) + "\n")
    evals, benches = _measure(model, output, data, labels_key, ep, batch, ep_options, timing, bench_options)
    document = _run_report(benches, evals, summary)
    if report_path:
        from onnxq.report.document import write_report

        write_report(report_path, document)
    if as_json:
        echo_json(document)
        return
    click.echo(format_comparison(evals, benches))
    if report_path:
        click.echo(f"\nreport written to {report_path}")


TIMING_FLAGS = ("warmup", "warmup_time", "runs", "duration", "opt_level")


def _check_paths(model, output, calib, data, recipe_file, report_path) -> None:
    """Before any work: the output folders, and no input overwritten by the model or the report."""
    from onnxq.model import check_output_path

    inputs = [("the calibration data", calib), ("the evaluation data", data), ("the recipe", recipe_file)]
    check_output_path(output, model, inputs=inputs)
    if report_path:
        from onnxq.report.document import check_report_path

        check_report_path(report_path, inputs=[("the input model", model), ("the output model", output), *inputs])


def _measure(model, output, data, labels_key, ep, batch, ep_options, timing, bench_options):
    """Evaluate float and quantized on ``data`` (the quantized against the float), then bench them interleaved."""
    from onnxq.measure.bench import BenchConfig, bench_models
    from onnxq.measure.evaluate import evaluate

    same = {"labels_key": labels_key, "ep": ep, "allow_fallback": bench_options["allow_fallback"],
            "ep_options": ep_options}  # fmt: skip
    evals = [evaluate(model, data, **same), evaluate(output, data, reference=model, **same)]
    fields = timing_fields(**timing, default_runs=RUN_RUNS, default_warmup=RUN_WARMUP)
    config = BenchConfig(eps=(ep,), batches=(batch,), data=data, **fields, **bench_options, **ep_options)
    return evals, bench_models([model, output], config)


def _run_report(benches: list[dict], evals: list[dict], summary) -> dict:
    """The report document of a run: what ``--report`` writes and ``--json`` prints."""
    import sys

    from onnxq.report.document import build_report
    from onnxq.report.environment import collect_environment

    return build_report(
        bench=benches,
        eval=evals,
        quantize=summary.to_dict(),
        environment=collect_environment(),
        command=sys.argv,
        notes=slower_than_float_warning(benches),
    )


def format_comparison(evals: list[dict], benches: list[dict]) -> str:
    """A float-vs-quantized table: accuracy, fidelity, size, latency and speedup."""
    rows = [("model", "top-1", "agreement", "SQNR dB", "size", "p50 ms", "p99 ms", "speedup")]
    for ev, b in zip(evals, benches, strict=False):
        acc = ev["accuracy"]["top1"]
        fid = (ev.get("fidelity") or {}).get("outputs") or [{}]
        agree, sqnr = fid[0].get("top1_agreement"), fid[0].get("sqnr_db")
        rows.append(
            (
                Path(ev["model_path"]).name,
                "-" if acc is None else f"{100 * acc:.2f}%",
                "-" if agree is None else f"{100 * agree:.2f}%",
                "-" if sqnr is None else f"{sqnr:.1f}",
                f"{b['size_bytes'] / 1024:.1f} KiB",
                f"{b['latency_ms']['p50']:.3f}",
                f"{b['latency_ms']['p99']:.3f}",
                f"{b['speedup_vs_first']:.2f}x" if b.get("speedup_vs_first") else "1.00x",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    notes = list(dict.fromkeys(w for b in benches for w in b.get("warnings", [])))
    notes += slower_than_float_warning(benches)
    ep_note = f"measured on {benches[0]['ep']} ({', '.join(f'{k}: {v}' for k, v in benches[-1]['ep_nodes'].items())})"
    return "\n".join(["float vs quantized, " + ep_note, *lines, *[f"warning: {n}" for n in notes]])


def slower_than_float_warning(benches: list[dict]) -> list[str]:
    """A warning when the quantized model (second entry) measured slower than the float one (first)."""
    if len(benches) < 2 or not benches[1].get("speedup_vs_first") or benches[1]["speedup_vs_first"] >= 1.0:
        return []
    f, q = benches[0]["latency_ms"]["p50"], benches[1]["latency_ms"]["p50"]
    return [
        f"the quantized model is slower than the float one on {benches[1]['ep']} (p50 {q:.3f} vs {f:.3f} ms): "
        "on this model and machine the Q/DQ conversions cost more than the int8 kernels save (layers too small, "
        "or ops without an int8 kernel between quantized ones); keep the float model here, or try "
        "--avoid-float-boundaries (the layers next to float-only ops stay float) and measure again"
    ]
