"""The README's table of every command and its options, generated from the click commands themselves.

``python -m onnxq.cli.doc`` prints the Markdown table; ``python -m onnxq.cli.doc --write README.md`` replaces the
table between the README's ``<!-- cli-table -->`` and ``<!-- /cli-table -->`` markers. Each option's row is what
``onnxq COMMAND --help`` shows for it (flags, value, help, default, range), so the table cannot say something
the CLI does not do; ``tests/test_cli_doc.py`` fails when the README's copy differs from the generated one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

BEGIN, END = "<!-- cli-table -->", "<!-- /cli-table -->"


def cli_table() -> str:
    """The Markdown table: a row per command (usage and summary), then a row per option."""
    from onnxq.cli import COMMANDS, cli

    root = click.Context(cli, info_name="onnxq")
    rows = [("`onnxq [OPTIONS] COMMAND`", "", _cell(cli.help or "")), *_option_rows(cli, root)]
    for name in sorted(COMMANDS):
        command = cli.get_command(root, name)
        ctx = click.Context(command, info_name=name, parent=root)
        usage = " ".join(["onnxq", name, *command.collect_usage_pieces(ctx)])
        rows.append((f"`{usage}`", "", _cell(COMMANDS[name][2])))
        rows += _option_rows(command, ctx)
    lines = ["| command | option | what it does |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def _option_rows(command: click.Command, ctx: click.Context) -> list[tuple[str, str, str]]:
    rows = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if not isinstance(param, click.Option) or record is None or "--help" in param.opts:
            continue
        flags, text = record
        rows.append(("", f"`{_cell(flags)}`", _cell(text)))
    return rows


def _cell(text: str) -> str:
    """One table cell: whitespace collapsed, pipes escaped (also inside code spans, as GitHub wants)."""
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def readme_table(readme: str) -> str | None:
    """The table between the markers of ``readme`` (None without both markers)."""
    if BEGIN not in readme or END not in readme:
        return None
    return readme.split(BEGIN, 1)[1].split(END, 1)[0].lstrip("\n")


def with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``."""
    head, rest = readme.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Print the table, or with ``--write FILE`` put it between FILE's markers."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stdout.write(cli_table())
        return 0
    if len(args) != 2 or args[0] != "--write":
        sys.stderr.write("usage: python -m onnxq.cli.doc [--write README.md]\n")
        return 2
    path = Path(args[1])
    text = path.read_text(encoding="utf-8")
    if readme_table(text) is None:
        sys.stderr.write(f"error: {path} has no {BEGIN} ... {END} markers\n")
        return 2
    path.write_text(with_table(text, cli_table()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
