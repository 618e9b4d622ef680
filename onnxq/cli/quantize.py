"""``onnxq quantize``: static post-training quantization to a QDQ model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from onnxq.cli.flags import PERCENTILE, POSITIVE_INT, echo_json, json_flag, report_flag
from onnxq.model import MIN_OPSET
from onnxq.quantize.calibration import METHODS
from onnxq.quantize.presets import CHOICES as PRESET_CHOICES
from onnxq.quantize.recipe import NODE_LISTS, QuantizeRecipe, load_recipe_mapping
from onnxq.quantize.registry import optional_passes
from onnxq.quantize.targets import ACTIVATION_TYPES, FORMATS, TARGETS, WEIGHT_TYPES


class _PassesOption(click.Option):
    """``--passes``, whose help lists the optional passes registered when the help is shown (a plugin pass
    registered later, or unregistered, is listed or not then), not when this module was imported."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = f"Extra passes, comma separated: {', '.join(optional_passes())} (`onnxq passes`)."
        return super().get_help_record(ctx)


_OPTIONS = [
    click.option(
        "--recipe",
        "recipe_file",
        type=click.Path(dir_okay=False),
        help="JSON or YAML file with the options below; flags given on the command line win.",
    ),
    click.option("--target", type=click.Choice(tuple(TARGETS)),
                 help="Deployment target: placement policy, types and defaults (default ort; `onnxq policy`)."),
    click.option("--activation-type", type=click.Choice(ACTIVATION_TYPES), help="Default: the target's."),
    click.option("--weight-type", type=click.Choice(WEIGHT_TYPES), help="Default: the target's."),
    click.option(
        "--per-channel/--per-tensor", default=None, help="Weight granularity (default per channel)."
    ),
    click.option("--symmetric-activations/--asymmetric-activations", default=None),
    click.option("--symmetric-weights/--asymmetric-weights", default=None),
    click.option(
        "--reduce-range/--full-range",
        default=None,
        help="8-bit weights on 7 bits ([-64, 64]), as ORT's reduce_range: int8 weights at the speed of its "
        "uint8 x int8 kernels on CPUs without VNNI, where full-range products saturate (there the default "
        "is uint8 weights, exact and slower).",
    ),
    click.option("--method", type=click.Choice(METHODS), help="Calibration method (default minmax)."),
    click.option(
        "--percentile",
        type=PERCENTILE,
        metavar="P",
        help="Percentile for --method percentile, in (0, 100] (default 99.99).",
    ),
    click.option("--calib-samples", type=POSITIVE_INT, metavar="N", help="Use at most this many calibration samples."),
    click.option(
        "--batch-size",
        type=POSITIVE_INT,
        metavar="N",
        help="Calibration batch size (default: the model's fixed batch, else about 32 MiB of activations).",
    ),
    click.option(
        "--exclude-node", "exclude_nodes", multiple=True, help="Leave this node in float (repeatable)."
    ),
    click.option(
        "--exclude-op-type",
        "exclude_op_types",
        multiple=True,
        help="Leave this op type in float (repeatable).",
    ),
    click.option(
        "--include-node",
        "include_nodes",
        multiple=True,
        help="Quantize only this node (repeatable; with --include-op-type, a node named by either); an "
        "--exclude-node/--exclude-op-type wins over it.",
    ),
    click.option(
        "--include-op-type",
        "include_op_types",
        multiple=True,
        help="Quantize only nodes of this op type (repeatable; see --include-node).",
    ),
    click.option(
        "--avoid-float-boundaries/--no-avoid-float-boundaries",
        default=None,
        help="Leave in float the Conv/GlobalAveragePool nodes next to a node that stays float (HardSwish, "
        "squeeze-excite Mul...): their Q/DQ pair can cost more than int8 saves.",
    ),
    click.option("--passes", cls=_PassesOption, help="Extra passes, comma separated (`onnxq passes`)."),
    click.option(
        "--format",
        type=click.Choice(FORMATS),
        help="qdq (default): Q/DQ pairs, for every EP; qoperator: ORT's integer ops (QLinearConv, QGemm...), "
        "for its CPU EP (target ort only).",
    ),
    click.option(
        "--opset", type=click.IntRange(min=MIN_OPSET), metavar="N", help="Upgrade the model to at least this opset."
    ),
    click.option(
        "--dynamic/--static",
        default=None,
        help="Dynamic quantization: int8 weights, activations quantized at run time, no --calib needed.",
    ),
    click.option(
        "--quantize-embeddings/--float-embeddings",
        default=None,
        help="Store Gather tables of 64K+ values as int8 rows (default on).",
    ),
    click.option(
        "--weight-only",
        type=click.Choice(("int4", "uint4", "int8", "uint8")),
        help="Block-wise weight-only quantization of MatMul/Gemm weights (LLMs); activations stay float. int*: "
        "symmetric, uint*: a zero point per block. --calib only for --algorithm gptq/awq.",
    ),
    click.option("--block-size", type=POSITIVE_INT, metavar="N",
                 help="--weight-only: weights per scale along the input dimension: 16, 32, 64, 128 (default) or 256."),
    click.option("--algorithm", type=click.Choice(("rtn", "gptq", "awq")),
                 help="--weight-only: rtn (round to nearest, default), gptq or awq (both read --calib)."),
    click.option("--weight-format", type=click.Choice(("matmulnbits", "qdq")),
                 help="--weight-only: matmulnbits (ORT's com.microsoft.MatMulNBits, default) or qdq (ONNX "
                 "DequantizeLinear with block_size, opset 21)."),
    click.option("--accuracy-level", type=click.IntRange(0, 4), metavar="0-4",
                 help="--weight-only matmulnbits: the compute type ORT's CPU kernel may use for the activations (0 "
                 "unset = fp32, 4 int8: faster prefill, less exact)."),
    click.option(
        "--save-ranges",
        type=click.Path(dir_okay=False),
        metavar="FILE.json",
        help="Write the calibrated activation ranges to this range cache (versioned JSON).",
    ),
    click.option(
        "--load-ranges",
        type=click.Path(dir_okay=False),
        metavar="FILE.json",
        help="Read the activation ranges from a --save-ranges cache of this model instead of calibrating "
        "(same method; --calib then only for passes that read data).",
    ),
    click.option(
        "--preset",
        type=click.Choice(PRESET_CHOICES),
        help="auto (default): the transformer preset (SmoothQuant) for a model with attention blocks; none; "
        "transformer.",
    ),
    click.option(
        "--target-sqnr",
        type=click.FloatRange(min=0, max=200),
        metavar="DB",
        help="Mixed precision: leave float the quantized nodes where 8 bits break (or raise their activations to "
        "16 bits: mixed_precision.raise_to in a recipe), most helpful first, until every output's SQNR against "
        "float reaches DB on calibration samples, or on --target-data (the mixed-precision pass).",
    ),
    click.option(
        "--target-data",
        type=click.Path(),
        metavar="DATA",
        help="Held-out inputs --target-sqnr is measured on (default: calibration samples, which the choice can fit).",
    ),
]


def quantize_options(func: Callable) -> Callable:
    """The recipe flags shared by ``quantize`` and ``run``."""
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def recipe_from_flags(recipe_file: str | None, flags: dict[str, Any]) -> QuantizeRecipe:
    """The recipe file's options, overridden by the flags given on the command line."""
    data = {str(k).replace("-", "_"): v for k, v in (load_recipe_mapping(recipe_file) if recipe_file else {}).items()}
    flags = dict(flags)
    if flags.get("passes") is not None:
        flags["passes"] = tuple(p.strip() for p in flags["passes"].split(",") if p.strip())
    for key in NODE_LISTS:
        flags[key] = tuple(flags.get(key) or ()) or None
    given = {k: v for k, v in flags.items() if v is not None}
    return QuantizeRecipe.from_dict({**data, **given}, where=recipe_file if recipe_file and not given else
                                    "recipe and command line" if recipe_file else "command line")  # fmt: skip


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the QDQ model."
)
@click.option(
    "--calib",
    "calib",
    type=click.Path(),
    metavar="DATA",
    help="Calibration data: .npz, .npy, a folder of .npy or .npz files, or an ONNX test-data folder "
    "[required, except with --dynamic or --load-ranges].",
)
@quantize_options
@click.option(
    "--verify", is_flag=True, help="Check at run time that float-preserving passes kept the outputs."
)
@click.option("--progress/--no-progress", default=True, help="Show a calibration progress bar on a terminal.")
@report_flag
@json_flag
def quantize_cmd(model, output, calib, recipe_file, report_path, as_json, verify, progress, **flags):
    """Quantize MODEL to a QDQ model written to -o OUTPUT: statically, with activation ranges calibrated on
    --calib DATA (or read with --load-ranges), or with --dynamic, without data."""
    from onnxq.cli.summary import format_quantize_summary
    from onnxq.model import check_output_path
    from onnxq.quantize.driver import quantize

    check_output_path(output, model, inputs=[("the calibration data", calib), ("the recipe", recipe_file),
                                             ("the --target-data data", flags.get("target_data"))])  # fmt: skip
    if report_path:
        from onnxq.report.document import check_report_path

        inputs = [("the model", model), ("the output model", output), ("the calibration data", calib),
                  ("the recipe", recipe_file)]  # fmt: skip
        check_report_path(report_path, inputs=inputs)
    recipe = recipe_from_flags(recipe_file, flags)
    summary = quantize(model, output, calib, recipe, progress=progress, verify=verify)
    if report_path:
        import sys

        from onnxq.report.document import build_report, write_report

        write_report(report_path, build_report(quantize=summary.to_dict(), command=["onnxq", *sys.argv[1:]]))
    if as_json:
        echo_json(summary.to_dict())
        return
    click.echo(format_quantize_summary(summary))
    if report_path:
        click.echo(f"report written to {report_path}")
