"""``onnxq analyze``: which quantized node costs the accuracy, and what to do about it."""

from __future__ import annotations

import click

from onnxq.cli.flags import POSITIVE_INT, echo_json, json_flag, report_flag
from onnxq.cli.quantize import quantize_options, recipe_from_flags


@click.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", "calib", required=True, type=click.Path(), metavar="DATA", help="Calibration data.")
@click.option(
    "--data", type=click.Path(), metavar="DATA", help="Held-out inputs to measure on (default: calibration samples)."
)
@click.option("--samples", type=POSITIVE_INT, default=32, show_default=True, help="Inputs measured on.")
@quantize_options
@report_flag
@json_flag
def analyze_cmd(model, calib, data, samples, recipe_file, report_path, as_json, **flags):
    """Quantize MODEL as `onnxq quantize` would (nothing is written but the report) and measure, per quantized
    node, what it costs: the output SQNR when only it is left float, when only it (its weight, its activations)
    is quantized; the error along the graph; and per activation tensor the range and error of each method."""
    from onnxq.quantize.analyze import analyze_model, write_analysis

    if report_path:
        from onnxq.report.document import check_report_path

        inputs = [("the model", model), ("the calibration data", calib), ("the data", data),
                  ("the recipe", recipe_file)]  # fmt: skip
        check_report_path(report_path, inputs=inputs)
    recipe = recipe_from_flags(recipe_file, flags)
    report = analyze_model(model, calib, recipe, data=data, samples=samples)
    if report_path:
        write_analysis(report_path, report)
    if as_json:
        echo_json(report)
        return
    click.echo(format_analysis(report))


def format_analysis(report: dict) -> str:
    from onnxq.quantize.analyze_render import node_table

    lines = [f"analyzed {report['model']}: worst output SQNR {_db(report['sqnr_db'])} on {report['measured_on']} "
             f"({report['runs']} model runs)", "", *node_table(report, limit=10), "", "what matters most:"]  # fmt: skip
    lines += [f"  - {line}" for line in report["advice"]]
    return "\n".join(lines)


def _db(value) -> str:
    return "-" if value is None else f"{value:.1f} dB"
