"""``onnxq policy``: print the QDQ placement table of a target."""

from __future__ import annotations

import dataclasses

import click

from onnxq.cli.flags import echo_json, json_flag
from onnxq.quantize.targets import TARGETS, format_targets


@click.command("policy")
@click.option("--target", type=click.Choice(tuple(TARGETS)), default="ort", show_default=True)
@json_flag
def policy_cmd(target: str, as_json: bool) -> None:
    """Print the targets' constraints and where Q/DQ pairs go for each op family on TARGET."""
    from onnxq.passes.placement import POLICIES, format_policy

    if as_json:
        echo_json(
            {
                "schema": "onnxq.policy/1",
                "targets": [dataclasses.asdict(t) for t in TARGETS.values()],
                "target": target,
                "placement": [dataclasses.asdict(rule) for rule in POLICIES[target]],
            }
        )
        return
    click.echo("targets:\n")
    click.echo(format_targets())
    click.echo(f"\nQDQ placement policy, target {target}:\n")
    click.echo(format_policy(target))
