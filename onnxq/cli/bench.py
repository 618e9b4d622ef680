"""``onnxq bench``: latency, throughput and memory of one or more models on one or more EPs."""

from __future__ import annotations

import sys
from typing import Any

import click

from onnxq.cli.ep_flags import ep_option_flags
from onnxq.cli.flags import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    allow_fallback_flag,
    echo_json,
    ep_flag,
    json_flag,
    report_flag,
    timing_fields,
    timing_options,
)
from onnxq.errors import ConfigError

BENCH_RUNS, BENCH_WARMUP = 100, 10


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@ep_flag(several=True)
@click.option(
    "--batch",
    "batches",
    multiple=True,
    type=POSITIVE_INT,
    metavar="N",
    help="Batch size; repeat for several (default: the model's fixed batch, the --shape's, or 1).",
)
@timing_options(runs=BENCH_RUNS, warmup=BENCH_WARMUP)
@click.option(
    "--data", type=click.Path(), help="Inputs from data (.npz, .npy, folder); the first batch is used."
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME:D0,D1,...",
    help="Shape of a random input with dynamic dims, e.g. x:1,3,224,224 (axis 0 follows --batch).",
)
@allow_fallback_flag
@click.option(
    "--device-id", type=NON_NEGATIVE_INT, metavar="N", default=0, show_default=True, help="GPU index for the GPU EPs."
)
@ep_option_flags(("cuda", "tensorrt"))
@click.option(
    "--profile",
    is_flag=True,
    help="After timing, profile each model with ORT's per-node profiler: top op types by time and share, per EP "
    "(the traces go beside the --report, as REPORT.profiles/, else to a temporary folder that is removed).",
)
@click.option(
    "--profile-runs", type=POSITIVE_INT, metavar="N", default=20, show_default=True, help="Runs profiled per model."
)
@click.option(
    "--decode",
    is_flag=True,
    help="Decoder LLMs (input_ids + past key/values -> logits + present): time a --prompt-tokens prefill and "
    "--new-tokens one-token decode steps with the KV cache (kept on the device on GPU EPs); --runs rounds "
    "[default: 3]; --data TOKENS.npz gives real token ids (else random ids below the vocabulary size).",
)
@click.option("--prompt-tokens", type=POSITIVE_INT, metavar="N", default=128, show_default=True,
              help="With --decode: tokens of the prefill.")  # fmt: skip
@click.option("--new-tokens", type=POSITIVE_INT, metavar="N", default=32, show_default=True,
              help="With --decode: decode steps of one token each.")  # fmt: skip
@report_flag
@json_flag
def bench_cmd(models, report_path, as_json, profile, profile_runs, decode, prompt_tokens, new_tokens, **options):
    """Measure MODELS (several: interleaved run by run, speedups against the first) on each --ep."""
    from pathlib import Path

    from onnxq.measure.bench import run_bench

    if decode:
        return _decode(models, options, as_json, report_path, profile, prompt_tokens, new_tokens)
    given = [f for f, v in (("--prompt-tokens", prompt_tokens != 128), ("--new-tokens", new_tokens != 32)) if v]
    if given:
        raise ConfigError(f"{' and '.join(given)} apply only with --decode", hint="add --decode, or drop them")

    if report_path:
        from onnxq.report.document import check_report_path

        # fail before the measurements, not after them
        inputs = [*(("a measured model", m) for m in models), ("the data", options.get("data"))]
        check_report_path(report_path, inputs=inputs)
    if profile:
        options["profile_runs"] = profile_runs
        if report_path:
            options["profile_dir"] = str(Path(report_path).parent / f"{Path(report_path).stem}.profiles")
    result = run_bench(models, bench_config(**options))
    if report_path:
        from onnxq.report.document import build_report, write_report

        document = build_report(bench=result["bench"], environment=result["environment"],
                                command=["onnxq", *sys.argv[1:]])  # fmt: skip
        write_report(report_path, document)
    if as_json:
        echo_json(result)
    else:
        click.echo(format_bench(result))
    if report_path and not as_json:
        click.echo(f"report written to {report_path}")


_NOT_WITH_DECODE = {"batches": "--batch", "shapes": "--shape", "io_binding": "--io-binding",
                    "duration": "--duration", "warmup_time": "--warmup-time", "warmup": "--warmup"}


def _decode(models, options, as_json, report_path, profile, prompt_tokens, new_tokens) -> None:
    """``onnxq bench --decode``: prefill and per-token decode latency (onnxq.measure.decode)."""
    from onnxq.measure.decode import DecodeConfig, decode_bench, format_decode
    from onnxq.report.environment import collect_environment, describe_environment
    from onnxq.runtime.session import SessionSpec

    bad = [flag for key, flag in _NOT_WITH_DECODE.items() if options.get(key) not in (None, (), False)]
    bad += ["--report"] if report_path else []
    bad += ["--profile"] if profile else []
    if bad:
        raise ConfigError(f"--decode does not take {', '.join(bad)}",
                          hint="--decode feeds one sequence (batch 1) and binds the cache itself on GPU EPs; "
                          "--json gives the numbers for a pipeline")  # fmt: skip
    config = DecodeConfig(prompt_tokens=prompt_tokens, new_tokens=new_tokens, rounds=options.get("runs") or 3)
    results = []
    for ep in options["eps"]:
        spec = SessionSpec(ep=ep, threads=options.get("threads"), device_id=options.get("device_id", 0),
                           allow_fallback=options.get("allow_fallback", False),
                           graph_optimization_level=options.get("opt_level", "all"))  # fmt: skip
        results.append(decode_bench(list(models), spec, config, data=options.get("data")))
    environment = collect_environment()
    if as_json:
        echo_json({"decode": [e for r in results for e in r["decode"]], "tokens": results[0]["tokens"],
                   "config": results[0]["config"], "environment": environment})  # fmt: skip
        return
    for r in results:
        click.echo(format_decode(r))
    click.echo(f"environment: {describe_environment(environment)}")


def bench_config(*, eps, batches, warmup, warmup_time, runs, duration, shapes, opt_level, **same):
    """The BenchConfig of the command's flags; the flags named as BenchConfig's fields pass through."""
    from onnxq.measure.bench import BenchConfig

    timing = timing_fields(warmup=warmup, warmup_time=warmup_time, runs=runs, duration=duration, opt_level=opt_level,
                           default_runs=BENCH_RUNS, default_warmup=BENCH_WARMUP)  # fmt: skip
    return BenchConfig(
        eps=tuple(eps),
        batches=tuple(batches) or (None,),
        shapes=parse_shapes(shapes),
        **timing,
        **same,  # threads, io_binding, data, allow_fallback, device_id, and the EP options (ep_flags.py)
    )


def parse_shapes(items: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``("x:1,3,224,224", ...)`` -> ``{"x": (1, 3, 224, 224)}``; ConfigError on a malformed item."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
        except ValueError:
            shape = None
        if not sep or not name or shape is None or any(d < 1 for d in shape):
            raise ConfigError(
                f"--shape {item!r} is not NAME:D0,D1,... with positive integer dims",
                hint="e.g. --shape input:1,3,224,224",
            )
        if name in shapes:
            raise ConfigError(f"--shape gives input {name!r} twice", hint="give each input once")
        shapes[name] = shape
    return shapes


def format_bench(result: dict[str, Any]) -> str:
    """The human table: one row per (model, EP, batch), then warnings and the environment."""
    from onnxq.report.environment import describe_environment
    from onnxq.report.tables import MISSING, ep_options_text, fmt_bytes, fmt_num

    headers = [
        "model",
        "ep",
        "batch",
        "p50 ms",
        "mean±std ms",
        "p90 ms",
        "p99 ms",
        "samples/s",
        "speedup",
        "create s",
        "1st run s",
        "peak RSS",
        "nodes per EP",
    ]
    rows = []
    for e in result["bench"]:
        lat = e["latency_ms"]
        speedup = e["speedup_vs_first"]
        rows.append(
            [
                e["model"],
                e["ep"],
                str(e["batch"]),
                fmt_num(lat["p50"]),
                f"{fmt_num(lat['mean'])}±{fmt_num(lat['std'])}",
                fmt_num(lat["p90"]),
                fmt_num(lat["p99"]),
                fmt_num(e["throughput_per_s"]),
                MISSING if speedup is None else f"{speedup:.2f}x",
                fmt_num(e["session_create_s"]),
                fmt_num(e["first_run_s"]),
                fmt_bytes(e["peak_rss_bytes"]),
                ", ".join(f"{ep.removesuffix('ExecutionProvider')} {n}" for ep, n in e["ep_nodes"].items()),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    runs = sorted({e["runs"] for e in result["bench"]})
    lines.append(
        f"({'/'.join(map(str, runs))} timed runs each; models interleaved run by run; "
        "speedup = p50 of the first model / p50)"
    )
    for e in result["bench"]:
        options = ep_options_text(e, reasons=True)
        if options:
            lines.append(f"ep options: {e['model']} on {e['ep']}, batch {e['batch']}: {options}")
    lines += _profile_lines(result["bench"])
    for e in result["bench"]:
        lines += [f"warning: {e['model']} on {e['ep']}, batch {e['batch']}: {w}" for w in e["warnings"]]
    lines.append(f"environment: {describe_environment(result['environment'])}")
    return "\n".join(lines)


def _profile_lines(entries: list[dict[str, Any]]) -> list[str]:
    from onnxq.measure.profile import format_profile

    return [line for e in entries if e.get("profile") for line in format_profile(e)]
