"""``onnxq inspect MODEL [--json]``: print what a model is made of and what the quantizer can reach."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxq.inspect.facts import inspect_file
from onnxq.inspect.render import render_text, report_to_json


@click.command("inspect")
# No click.Path(exists=True): a missing file must go through load_model, which says what and how to fix.
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (schema onnxq.inspect/1).")
def inspect_cmd(model: Path, as_json: bool) -> None:
    """Describe MODEL: IO, opsets, op counts, parameters, quantizable nodes, warnings."""
    report = inspect_file(model)
    if as_json:
        click.echo(json.dumps(report_to_json(report), indent=2))
    else:
        click.echo(render_text(report))
