"""The ``onnxq`` command line: a click group whose commands live in ``onnxq/commands/``.

Commands are imported lazily, so ``onnxq --help`` is fast and needs no GPU package. Every
:class:`~onnxq.errors.OnnxqError` becomes one ``error:`` line and one ``hint:`` line on stderr and exit
code 2; a traceback is shown only with ``--debug`` (or ``ONNXQ_DEBUG=1``).
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

import click

from onnxq import __version__
from onnxq.errors import OnnxqError

# name -> (module, attribute, one-line help shown by `onnxq --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "bench": (
        "onnxq.cli.bench",
        "bench_cmd",
        "Measure latency, throughput and memory on one or more EPs.",
    ),
    "inspect": (
        "onnxq.cli.inspect",
        "inspect_cmd",
        "Describe a model: IO, ops, parameters, quantizability.",
    ),
    "quantize": (
        "onnxq.cli.quantize",
        "quantize_cmd",
        "Quantize a float model to QDQ with calibration data.",
    ),
    "analyze": (
        "onnxq.cli.analyze",
        "analyze_cmd",
        "Measure what each quantized node costs in accuracy, and say what to do about it.",
    ),
    "convert": (
        "onnxq.cli.convert",
        "convert_cmd",
        "Rewrite a QDQ model from any tool as ORT's QOperator ops, checked against it.",
    ),
    "fp16": (
        "onnxq.cli.fp16",
        "fp16_cmd",
        "Convert a float model to float16 for GPU execution providers.",
    ),
    "run": (
        "onnxq.cli.run",
        "run_cmd",
        "Quantize, evaluate and benchmark: float vs quantized in one go.",
    ),
    "policy": ("onnxq.cli.policy", "policy_cmd", "Print the QDQ placement policy of a target."),
    "passes": ("onnxq.cli.passes", "passes_cmd", "List the registered passes: phase, options, defaults."),
    "sweep": ("onnxq.cli.sweep", "sweep_cmd", "Models x recipes x EPs from a spec: resumable, cached, local or Ray."),
    "eval": (
        "onnxq.cli.eval",
        "eval_cmd",
        "Accuracy against labels, fidelity against a reference model or stored outputs, and pass/fail checks.",
    ),
    "lint": ("onnxq.cli.lint", "lint_cmd", "Check a QDQ model against a target's rules (TensorRT, ORT CPU)."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs or shows its help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxq")
@click.option("--debug", is_flag=True, envvar="ONNXQ_DEBUG", help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """onnxq: quantize ONNX models and measure what it cost, on real execution providers."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code.

    Python warnings raised on the way (numpy's overflow warnings on a model with infinite weights, say) are
    printed after the command's own output as ``warning:`` lines, so that an error is always the first line
    on stderr; with ``--debug`` they are shown where they happen.
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("ONNXQ_DEBUG", "") not in ("", "0")
    if debug:
        return _run(args, debug)
    with warnings.catch_warnings(record=True) as caught:
        code = _run(args, debug)
    # one line each: the message's own line breaks (and a source line, which showwarning would add) left out
    seen = (f"{' '.join(str(w.message).split())} ({w.category.__name__}, {Path(w.filename).name}:{w.lineno})"
            for w in caught)  # fmt: skip
    for text in dict.fromkeys(seen):  # each once, in order
        click.echo(f"warning: {text}", err=True)
    return code


def _run(args: list[str], debug: bool) -> int:
    try:
        code = cli.main(args=args, prog_name="onnxq", standalone_mode=False)
    except OnnxqError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as exc:  # a bad flag, argument or value: the same two lines as any user error
        from onnxq.cli.usage import usage_lines

        message, hint = usage_lines(exc, sorted(COMMANDS), args)
        click.echo(f"error: {message}", err=True)
        click.echo(f"hint: {hint}", err=True)
        return exc.exit_code
    except click.ClickException as exc:  # click's other errors (a file it could not open): the same two lines
        click.echo(f"error: {exc.format_message()}", err=True)
        click.echo("hint: `onnxq COMMAND --help` says what each command takes", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # a bug in onnxq, not a user error: still no traceback without --debug
        if debug:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: run again with --debug for the traceback, and report it", err=True)
        return 1
    return code if isinstance(code, int) else 0  # a command's ctx.exit(N): lint's or eval's 1 comes back here


if __name__ == "__main__":
    sys.exit(main())
