"""The EP options' command-line flags, made from the EP table's option rows (onnxq.runtime.eps).

Each flag's parameter is named as its SessionSpec/BenchConfig field, so a command passes them through. A
switch left off (``--nhwc`` nor ``--no-nhwc``) stays None: onnxq chooses, or ORT's default applies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from onnxq.runtime.eps import EPS, EPOption


def _flag(option: EPOption) -> Callable[[Callable], Callable]:
    if option.kind == "switch":
        return click.option(option.flag, option.field, default=None, help=option.help)
    if option.kind == "flag":
        return click.option(option.flag, option.field, is_flag=True, help=option.help)
    kinds: dict[str, Any] = {
        "choice": click.Choice(option.choices, case_sensitive=False),
        "int": click.IntRange(min=1),  # byte counts and sizes: 0 or less means nothing
        "path": click.Path(file_okay=False),
    }
    return click.option(option.flag, option.field, type=kinds[option.kind], metavar=option.metavar, help=option.help)


def ep_option_flags(eps: tuple[str, ...], *, leave_out: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """A decorator adding the flags of ``eps``' options, except the fields in ``leave_out``."""
    options = [o for ep in eps for o in EPS[ep].options if o.field not in leave_out]

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = _flag(option)(func)
        return func

    return decorate


def given_ep_options(flags: dict[str, Any]) -> dict[str, Any]:
    """Pop the EP option flags out of a command's keyword arguments: {field: value} for those given."""
    fields = [o.field for ep in EPS.values() for o in ep.options]
    return {f: flags.pop(f) for f in fields if f in flags and flags[f] is not None}
