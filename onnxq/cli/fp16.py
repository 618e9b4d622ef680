"""``onnxq fp16``: convert a float model to float16 (for GPU execution providers)."""

from __future__ import annotations

import click

from onnxq.cli.flags import echo_json, json_flag


@click.command("fp16")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the FP16 model."
)
@click.option("--keep-op", "keep_ops", multiple=True, help="Leave this op type in float32 (repeatable).")
@click.option("--keep-node", "keep_nodes", multiple=True, help="Leave this node in float32 (repeatable).")
@json_flag
def fp16_cmd(model: str, output: str, keep_ops: tuple[str, ...], keep_nodes: tuple[str, ...], as_json: bool) -> None:
    """Convert MODEL's weights and activations to float16, keeping float32 inputs and outputs."""
    from onnxq.cli.summary import human_bytes
    from onnxq.model import check_output_path, load_model, lower_ir_version_for_ort, save_model
    from onnxq.passes.fp16 import DEFAULT_KEEP_OPS, FP16Config, convert_to_fp16
    from onnxq.passes.prepare import prepare_model
    from onnxq.quantize.calibration import check_node_lists
    from onnxq.quantize.driver import stored_bytes

    check_output_path(output, model)
    loaded = load_model(model)
    for warning in check_node_lists(loaded, keep_nodes=keep_nodes, keep_ops=keep_ops):  # unknown names: errors
        click.echo(f"warning: {warning}", err=True)
    prepared = prepare_model(loaded).model
    cfg = FP16Config(keep_ops=DEFAULT_KEEP_OPS + tuple(keep_ops), keep_nodes=tuple(keep_nodes))
    result = convert_to_fp16(prepared, cfg)
    lower_ir_version_for_ort(result.model)
    save_model(result.model, output, input_path=model)
    d = result.details
    before, after = stored_bytes(model), stored_bytes(output)  # external data included
    if as_json:
        echo_json({"input_path": model, "output_path": output, "size_before": before, "size_after": after, **d})
        return
    click.echo(
        f"fp16 {model} -> {output}: {d['initializers_converted']} weights converted, "
        f"{d['kept_nodes']} nodes kept in float32, {d['values_clipped_to_fp16_range']} values clipped; "
        f"size {human_bytes(before)} -> {human_bytes(after)}"
    )
