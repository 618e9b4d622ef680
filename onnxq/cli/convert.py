"""``onnxq convert``: a QDQ model (from any tool) to ORT's QOperator ops, checked against the QDQ model."""

from __future__ import annotations

import click

from onnxq.passes._qoperator_ops import BUILDERS
from onnxq.quantize.convert import DEFAULT_MIN_SQNR_DB


@click.command("convert")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the model.")
@click.option(
    "--format", "fmt", type=click.Choice(("qoperator",)), default="qoperator", show_default=True,
    help="The output format: ORT's QOperator ops (QLinearConv, QLinearMatMul, QGemm, QLinearAdd...).",
)  # fmt: skip
@click.option("--data", type=click.Path(), help="Inputs to check the conversion on (default: random inputs).")
@click.option("--samples", type=click.IntRange(min=1), default=32, show_default=True, help="Samples of --data.")
@click.option(
    "--min-sqnr", type=float, default=DEFAULT_MIN_SQNR_DB, show_default=True,
    help="Where the outputs are not bit-exact, the least SQNR (dB) against the QDQ model's.",
)  # fmt: skip
@click.option(
    "--keep-op-type", "keep_op_types", multiple=True, type=click.Choice(sorted(BUILDERS)),
    help="Leave this op type in QDQ form (repeatable).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def convert_cmd(model, output, fmt, data, samples, min_sqnr, keep_op_types, as_json):
    """Convert the QDQ model MODEL to QOperator form and write it to -o OUTPUT.

    Both models run in ONNX Runtime on the same inputs; OUTPUT is written only when the converted model's
    outputs are bit-exact, or within --min-sqnr dB, of the QDQ model's.
    """
    from onnxq.cli.summary import format_convert_summary
    from onnxq.quantize.convert import convert

    summary = convert(model, output, data=data, samples=samples, min_sqnr=min_sqnr, keep_op_types=keep_op_types)
    if as_json:
        import json

        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        click.echo(format_convert_summary(summary))
