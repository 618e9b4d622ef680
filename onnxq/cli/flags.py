"""Command-line options that several commands share, each defined once and reused as a decorator.

An option means the same on every command that takes it: ``--json`` (machine output on stdout, and nothing
else there), ``--report FILE`` (.json/.md/.html), the timing options of ``bench`` and ``run`` (``--warmup``,
``--warmup-time``, ``--runs``, ``--duration``, ``--io-binding``, ``--opt-level``, ``--threads``). Values are
checked by click's ranges when they are parsed, so ``--runs 0`` or ``--batch-size 0`` is a usage error naming
the flag, never silently turned into something else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from onnxq.errors import ConfigError

POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
PERCENTILE = click.FloatRange(min=0, max=100, min_open=True)
PERCENT = click.FloatRange(min=0, max=100)
NON_NEGATIVE_FLOAT = click.FloatRange(min=0)
OPT_LEVEL_CHOICES = ("disable", "basic", "extended", "all")


def stack(*options: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    """One decorator applying ``options`` in the order written (the first is listed first in --help)."""

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


json_flag = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout (and nothing else there)."
)
report_flag = click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Also write a report: .json, .md or .html by the suffix.",
)
allow_fallback_flag = click.option(
    "--allow-fallback", is_flag=True, help="Go on when nodes fall back to another EP; report the split."
)


def ep_flag(*, several: bool) -> Callable[[Callable], Callable]:
    """``--ep``, one of the EP table's names (any case); ``several``: repeatable, into ``eps``."""
    from onnxq.runtime.eps import EP_NAMES

    choice = click.Choice(EP_NAMES, case_sensitive=False)
    if several:
        return click.option("--ep", "eps", multiple=True, default=("cpu",), show_default=True, type=choice,
                            help="Execution provider; repeat to measure several.")  # fmt: skip
    return click.option("--ep", default="cpu", show_default=True, type=choice, help="Execution provider.")


def timing_options(*, runs: int, warmup: int) -> Callable[[Callable], Callable]:
    """``bench``'s timing options, with this command's default run and warm-up counts."""
    from onnxq.runtime.session import OPT_LEVELS

    assert tuple(OPT_LEVELS) == OPT_LEVEL_CHOICES  # internal invariant: one list of levels
    return stack(
        click.option("--threads", type=POSITIVE_INT, metavar="N",
                     help="Intra-op threads (default: ORT's, one per physical core)."),
        click.option("--warmup", type=NON_NEGATIVE_INT, metavar="N",
                     help=f"Untimed runs per model before timing [default: {warmup}]."),
        click.option("--warmup-time", type=POSITIVE_FLOAT, metavar="SECONDS",
                     help="Warm up for this many seconds per model instead of --warmup."),
        click.option("--runs", type=POSITIVE_INT, metavar="N",
                     help=f"Timed rounds; each round runs every model once [default: {runs}]."),
        click.option("--duration", type=POSITIVE_FLOAT, metavar="SECONDS",
                     help="Time rounds for at least this many seconds instead of --runs."),
        click.option("--io-binding", is_flag=True, help="Bind inputs and outputs on the device; run_with_iobinding."),
        click.option("--opt-level", type=click.Choice(OPT_LEVEL_CHOICES), default="all", show_default=True,
                     help="ORT graph optimization level."),
    )  # fmt: skip


def timing_fields(
    *, warmup: int | None, warmup_time: float | None, runs: int | None, duration: float | None, opt_level: str,
    default_runs: int, default_warmup: int,
) -> dict[str, Any]:  # fmt: skip
    """The BenchConfig fields of the timing options; ConfigError when both forms of one choice are given."""
    if warmup is not None and warmup_time is not None:
        raise ConfigError("--warmup and --warmup-time were both given", hint="give one of them")
    if runs is not None and duration is not None:
        raise ConfigError("--runs and --duration were both given", hint="give one of them")
    return {
        "warmup_runs": default_warmup if warmup is None else warmup,
        "warmup_s": warmup_time,
        "runs": default_runs if runs is None else runs,
        "duration_s": duration,
        "graph_optimization_level": opt_level,
    }


def echo_json(document: Any) -> None:
    """``document`` as indented JSON on stdout: numpy scalars and arrays as plain numbers and lists, paths as
    strings; NaN and infinity are refused (JSON has no spelling for them: a result holds None instead)."""
    import json

    click.echo(json.dumps(document, indent=2, allow_nan=False, default=_plain))


def _plain(value: Any) -> Any:
    from pathlib import Path

    import numpy as np

    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"a {type(value).__name__} has no JSON form")
