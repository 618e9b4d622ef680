"""``onnxq passes``: every registered pass with its phase, options and defaults."""

from __future__ import annotations

import json

import click


@click.command("passes")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def passes_cmd(as_json: bool) -> None:
    """List the registered passes in pipeline order: phase, what they need and provide, options and defaults."""
    from onnxq.quantize.registry import all_passes, describe_pass

    described = [describe_pass(spec) for spec in all_passes().values()]
    if as_json:
        click.echo(json.dumps({"schema": "onnxq.passes/1", "passes": described}, indent=2))
        return
    for d in described:
        how = f"--passes {d['name']}; recipe key {d['recipe_key']!r}" if d["optional"] else "always runs"
        click.echo(f"{d['name']}  [{d['phase']}]  ({how})")
        click.echo(f"  {d['summary']}")
        if d["needs"] or d["provides"]:
            click.echo(f"  needs: {', '.join(d['needs']) or '-'}; provides: {', '.join(d['provides']) or '-'}")
        for name, opt in d["options"].items():
            click.echo(f"    {name} ({opt['type']}) = {json.dumps(opt['default'])}")
        click.echo("")
