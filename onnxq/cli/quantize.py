"""``onnxq quantize``: static post-training quantization to a QDQ model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from onnxq.quantize.calibration import METHODS
from onnxq.quantize.recipe import QuantizeRecipe, load_recipe_mapping
from onnxq.quantize.registry import optional_passes
from onnxq.quantize.targets import ACTIVATION_TYPES, FORMATS, TARGETS, WEIGHT_TYPES

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
    click.option("--method", type=click.Choice(METHODS), help="Calibration method (default minmax)."),
    click.option("--percentile", type=float, help="Percentile for --method percentile (default 99.99)."),
    click.option("--calib-samples", type=int, help="Use at most this many calibration samples."),
    click.option(
        "--batch-size",
        type=int,
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
        "--avoid-float-boundaries/--no-avoid-float-boundaries",
        default=None,
        help="Leave in float the Conv/GlobalAveragePool nodes next to a node that stays float (HardSwish, "
        "squeeze-excite Mul...): their Q/DQ pair can cost more than int8 saves.",
    ),
    click.option("--passes", help=f"Extra passes, comma separated: {', '.join(optional_passes())} (`onnxq passes`)."),
    click.option(
        "--format",
        type=click.Choice(FORMATS),
        help="qdq (default): Q/DQ pairs, for every EP; qoperator: ORT's integer ops (QLinearConv, QGemm...), "
        "for its CPU EP (target ort only).",
    ),
    click.option("--opset", type=int, help="Upgrade the model to at least this opset."),
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
    for key in ("exclude_nodes", "exclude_op_types"):
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
    "--calib", "calib", type=click.Path(), help="Calibration data: .npz, .npy or a folder of .npy files."
)
@quantize_options
@click.option(
    "--verify", is_flag=True, help="Check at run time that float-preserving passes kept the outputs."
)
@click.option("--progress/--no-progress", default=True, help="Show a calibration progress bar on a terminal.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def quantize_cmd(model, output, calib, recipe_file, as_json, verify, progress, **flags):
    """Quantize MODEL statically (QDQ format) with calibration data, and write it to OUTPUT."""
    from onnxq.cli.summary import format_quantize_summary
    from onnxq.model import check_output_path
    from onnxq.quantize.driver import quantize

    check_output_path(output, model, inputs=[("the calibration data", calib), ("the recipe", recipe_file)])
    recipe = recipe_from_flags(recipe_file, flags)
    summary = quantize(model, output, calib, recipe, progress=progress, verify=verify)
    if as_json:
        import json

        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        click.echo(format_quantize_summary(summary))
