"""The README's command table is the CLI's own: generated from the click commands, so it cannot drift."""

from __future__ import annotations

from conftest import REPO
from onnxq.cli import COMMANDS
from onnxq.cli.doc import cli_table, readme_table, with_table


def test_readme_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme_table(readme) == cli_table(), "run: python -m onnxq.cli.doc --write README.md"


def test_table_has_every_command_and_option_of_the_cli():
    table = cli_table()
    for name in COMMANDS:
        assert f"| `onnxq {name} " in table, name
    for flag in ("`--include-node TEXT`", "`--save-ranges FILE.json`", "`--atol A`", "`--profile`", "`--json`"):
        assert flag in table, flag


def test_with_table_replaces_only_what_lies_between_the_markers():
    text = "intro\n<!-- cli-table -->\nold\n<!-- /cli-table -->\noutro\n"
    assert with_table(text, "new\n") == "intro\n<!-- cli-table -->\nnew\n<!-- /cli-table -->\noutro\n"
    assert readme_table(with_table(text, "new\n")) == "new\n"
