"""``onnxq policy``: print the QDQ placement table of a target."""

from __future__ import annotations

import click


@click.command("policy")
@click.option("--target", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True)
def policy_cmd(target: str) -> None:
    """Print where Q/DQ pairs go for each op family on TARGET."""
    from onnxq.passes.placement import format_policy

    click.echo(f"QDQ placement policy, target {target}:\n")
    click.echo(format_policy(target))
