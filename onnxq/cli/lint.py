"""``onnxq lint MODEL --target tensorrt|ort|cuda [--json]``: check a QDQ model against a target's rules."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxq.errors import ConfigError
from onnxq.quantize.targets import TARGETS

LINT_ERRORS_EXIT_CODE = 1  # the lint found error-severity violations (a CI gate); user errors exit 2


@click.command("lint")
# No click.Path(exists=True): a missing file must go through load_model, which says what and how to fix.
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(tuple(TARGETS)),
              help="The rules to check: tensorrt (TensorRT's explicit quantization), ort (ONNX Runtime's CPU "
              "EP QDQ fusions); cuda shares tensorrt's rules (the same int8, zero-point-0 Q/DQ).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (schema onnxq.lint/1).")
@click.pass_context
def lint_cmd(ctx: click.Context, model: Path, target: str, as_json: bool) -> None:
    """Check the QDQ model MODEL against TARGET's rules: each violation with its node, rule, severity and fix.

    Errors are what the target refuses or computes differently (uint8 or asymmetric Q/DQ on TensorRT, a bias
    scale other than s_x*s_w, per-channel activations, ...); warnings are nodes left in float or Q/DQ work
    that buys nothing. Exit code 0: no error (warnings allowed); 1: the lint found errors; 2: a user error
    (no such file, not a model, no Q/DQ node in it). An onnxq bug also exits 1, after an `internal error:` line.
    """
    from onnxq.lint.check import lint_file
    from onnxq.lint.render import render_text, report_to_json

    if target is None:  # required, but checked here so that the error is one line with a hint
        raise ConfigError("onnxq lint needs --target", hint=f"choose one of {', '.join(TARGETS)}")
    report = lint_file(model, target)
    click.echo(json.dumps(report_to_json(report), indent=2) if as_json else render_text(report))
    if not report.passed:
        ctx.exit(LINT_ERRORS_EXIT_CODE)
