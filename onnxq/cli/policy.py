"""``onnxq policy``: print the QDQ placement table of a target."""

from __future__ import annotations

import click

from onnxq.quantize.targets import TARGETS, format_targets


@click.command("policy")
@click.option("--target", type=click.Choice(tuple(TARGETS)), default="ort", show_default=True)
def policy_cmd(target: str) -> None:
    """Print the targets' constraints and where Q/DQ pairs go for each op family on TARGET."""
    from onnxq.passes.placement import format_policy

    click.echo("targets:\n")
    click.echo(format_targets())
    click.echo(f"\nQDQ placement policy, target {target}:\n")
    click.echo(format_policy(target))
