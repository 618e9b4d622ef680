"""click's usage errors as onnxq's two lines: ``error: <what was wrong>`` and ``hint: <how to fix it>``.

The hint names the close match of a misspelled option, command or choice (``did you mean --exclude-node?``),
or the command's usage line, and always where the full help is (``onnxq quantize --help``).
"""

from __future__ import annotations

import ast
import difflib
import re

import click

_CHOICE_VALUE = re.compile(r"^(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\") is not")


def usage_lines(exc: click.UsageError, commands: list[str], argv: list[str]) -> tuple[str, str]:
    """The error line's text and the hint line's text for ``exc`` (without the ``error: ``/``hint: `` prefix).

    ``commands`` are the group's command names, for the close match of an unknown command; ``argv`` the
    arguments, whose command names the help to read when click's parser gives no context (``-o`` missing
    its value).
    """
    ctx = exc.ctx
    named = next((a for a in argv if a in commands), None)
    where = ctx.command_path if ctx is not None else " ".join(["onnxq", *([named] if named else [])])
    help_hint = f"`{where} --help` lists the options"
    if isinstance(exc, click.NoSuchOption):
        close = difflib.get_close_matches(exc.option_name, sorted(exc.possibilities or ()), n=2)
        return f"no such option {exc.option_name}", _joined(_did_you_mean(close), help_hint)
    message = exc.format_message()
    if message.startswith("No such command") and ctx is not None and ctx.parent is None:
        name = _quoted_name(message)
        close = difflib.get_close_matches(name, commands, n=2) if name else []
        return message, _joined(_did_you_mean(close), "`onnxq --help` lists the commands")
    if isinstance(exc, click.BadParameter) and isinstance(getattr(exc.param, "type", None), click.Choice):
        close = _close_choices(exc.message, exc.param.type)
        return message, _joined(_did_you_mean(close, quote=True), help_hint)
    return message, _joined(_usage(ctx), help_hint)


def _did_you_mean(close: list[str], *, quote: bool = False) -> str:
    if not close:
        return ""
    shown = [repr(c) if quote else c for c in close]
    return f"did you mean {' or '.join(shown)}?"


def _joined(*parts: str) -> str:
    """The hint's parts in order; a question is followed by a space, anything else by a semicolon."""
    text = ""
    for part in (p for p in parts if p):
        text += ("" if not text else " " if text.endswith("?") else "; ") + part
    return text


def _usage(ctx: click.Context | None) -> str:
    if ctx is None:
        return ""
    pieces = " ".join(ctx.command.collect_usage_pieces(ctx))
    return f"usage: {ctx.command_path} {pieces}".rstrip()


def _quoted_name(message: str) -> str | None:
    m = re.search(r"'([^']*)'", message)
    return m.group(1) if m else None


def _close_choices(message: str, choice: click.Choice) -> list[str]:
    """The choices close to the value a Choice refused, read back from click's message."""
    m = _CHOICE_VALUE.match(message)
    if m is None:
        return []
    try:
        value = str(ast.literal_eval(m.group("value")))
    except (ValueError, SyntaxError):
        return []
    options = [str(c) for c in choice.choices]
    lowered = {o.lower(): o for o in options}
    close = difflib.get_close_matches(value.lower(), list(lowered), n=2)
    return [lowered[c] for c in close]
