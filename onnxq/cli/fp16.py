"""``onnxq fp16``: convert a float model to float16 (for GPU execution providers)."""

from __future__ import annotations

import click


@click.command("fp16")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the FP16 model."
)
@click.option("--keep-op", "keep_ops", multiple=True, help="Leave this op type in float32 (repeatable).")
@click.option("--keep-node", "keep_nodes", multiple=True, help="Leave this node in float32 (repeatable).")
def fp16_cmd(model: str, output: str, keep_ops: tuple[str, ...], keep_nodes: tuple[str, ...]) -> None:
    """Convert MODEL's weights and activations to float16, keeping float32 inputs and outputs."""
    from pathlib import Path

    from onnxq.cli.summary import human_bytes
    from onnxq.model import check_output_path, load_model, lower_ir_version_for_ort, save_model
    from onnxq.passes.fp16 import DEFAULT_KEEP_OPS, FP16Config, convert_to_fp16
    from onnxq.passes.prepare import prepare_model

    check_output_path(output, model)
    prepared = prepare_model(load_model(model)).model
    cfg = FP16Config(keep_ops=DEFAULT_KEEP_OPS + tuple(keep_ops), keep_nodes=tuple(keep_nodes))
    result = convert_to_fp16(prepared, cfg)
    lower_ir_version_for_ort(result.model)
    save_model(result.model, output, input_path=model)
    d = result.details
    click.echo(
        f"fp16 {model} -> {output}: {d['initializers_converted']} weights converted, "
        f"{d['kept_nodes']} nodes kept in float32, {d['values_clipped_to_fp16_range']} values clipped; "
        f"size {human_bytes(Path(model).stat().st_size)} -> {human_bytes(Path(output).stat().st_size)}"
    )
