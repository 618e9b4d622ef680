"""``onnxq eval``: accuracy against labels and fidelity against a reference model, on a real EP."""

from __future__ import annotations

import sys
from typing import Any

import click

from onnxq.cli.ep_flags import ep_option_flags, given_ep_options
from onnxq.cli.flags import (
    NON_NEGATIVE_FLOAT,
    PERCENT,
    POSITIVE_INT,
    allow_fallback_flag,
    echo_json,
    ep_flag,
    json_flag,
    report_flag,
)


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--data", required=True, type=click.Path(), help="Evaluation data: .npz, .npy or a folder of .npy files."
)
@click.option(
    "--labels", "labels_key", help="Key of the label array in the .npz (default: 'label' etc. if present)."
)
@click.option("--reference", type=click.Path(dir_okay=False), help="Float model to measure fidelity against.")
@click.option(
    "--expected",
    type=click.Path(),
    metavar="FILE_OR_DIR",
    help="Stored outputs to measure fidelity against: an .npz keyed by output name (one row per sample), or an "
    "ONNX test-data folder with output_*.pb.",
)
@ep_flag(several=False)
@allow_fallback_flag
@ep_option_flags(("cuda",), leave_out=("cuda_graph",))  # evaluation feeds a new batch each run: no CUDA graph
@click.option(
    "--batch",
    "--batch-size",
    "batch",
    type=POSITIVE_INT,
    metavar="N",
    help="Batch size (default: the model's fixed batch, or 1).",
)
@click.option(
    "--atol", type=NON_NEGATIVE_FLOAT, metavar="A", help="Check: every output element within atol + rtol * |ref|."
)
@click.option(
    "--rtol", type=NON_NEGATIVE_FLOAT, metavar="R", help="Check: the relative part of --atol's test (0 when not given)."
)
@click.option("--min-sqnr", "min_sqnr", type=float, metavar="DB", help="Check: each output's SQNR is at least DB.")
@click.option(
    "--min-agreement", type=PERCENT, metavar="PCT", help="Check: top-1 agreement of class-score outputs >= PCT %."
)
@click.option("--perplexity", is_flag=True, help="Decoder LLMs: perplexity over sliding windows of the token ids in "
              "DATA (.npz with input_ids [N, L]); with --reference, next-token top-1 agreement and KL against it.")
@click.option("--window", type=POSITIVE_INT, metavar="N", help="--perplexity: tokens per window (default: L).")
@click.option("--stride", type=POSITIVE_INT, metavar="N",
              help="--perplexity: tokens the window moves by; only those are scored (default: the window).")
@report_flag
@json_flag
def eval_cmd(model, data, labels_key, reference, expected, ep, allow_fallback, batch, atol, rtol, min_sqnr,
             min_agreement, perplexity, window, stride, report_path, as_json, **ep_options):  # fmt: skip
    """Evaluate MODEL on DATA: top-1/top-5 accuracy against labels, and fidelity against --reference or
    --expected. With --atol/--rtol, --min-sqnr or --min-agreement, exit with code 1 when a check fails. With
    --perplexity, a decoder LLM's perplexity on token ids."""
    if perplexity or window or stride:
        given = [f for f, v in (("--labels", labels_key), ("--expected", expected), ("--atol", atol), ("--rtol", rtol),
                                ("--min-sqnr", min_sqnr), ("--min-agreement", min_agreement), ("--report", report_path),
                                ("--batch", batch)) if v is not None]  # fmt: skip
        _perplexity_cmd(model, data, reference, ep, window, stride, as_json, given, perplexity, ep_options)
        return
    from onnxq.measure.checks import EvalChecks
    from onnxq.measure.evaluate import evaluate
    from onnxq.report.document import build_report, check_report_path, write_report

    agreement = None if min_agreement is None else min_agreement / 100
    checks = EvalChecks(atol=atol, rtol=rtol, min_sqnr_db=min_sqnr, min_agreement=agreement)
    if report_path:
        # fail before the evaluation, not after it
        inputs = [("the model", model), ("the data", data), ("the reference", reference), ("the outputs", expected)]
        check_report_path(report_path, inputs=inputs)
    result = evaluate(model, data, labels_key=labels_key, reference=reference, expected=expected, ep=ep,
                      batch_size=batch, allow_fallback=allow_fallback, ep_options=given_ep_options(ep_options),
                      checks=checks)  # fmt: skip
    if report_path:
        write_report(report_path, build_report(eval=[result], command=["onnxq", *sys.argv[1:]]))
    if as_json:
        echo_json(result)
    else:
        click.echo(format_eval(result))
        if report_path:
            click.echo(f"report written to {report_path}")
    failed = [r for r in (result.get("checks") or {"results": []})["results"] if not r["passed"]]
    if failed:
        click.echo(f"eval: {len(failed)} of {len(result['checks']['results'])} checks failed", err=True)
        raise click.exceptions.Exit(1)


def _perplexity_cmd(model, data, reference, ep, window, stride, as_json, given, asked, ep_options) -> None:
    from onnxq.errors import ConfigError
    from onnxq.measure.perplexity import perplexity

    if not asked:
        raise ConfigError("--window and --stride are --perplexity options", hint="add --perplexity")
    options = [f"--{k.replace('_', '-')}" for k, v in ep_options.items() if v is not None]
    if given or options:
        raise ConfigError(f"{(given + options)[0]} does not apply to --perplexity",
                          hint="--perplexity takes --data, --reference, --ep, --window and --stride")  # fmt: skip
    result = perplexity(model, data, reference=reference, window=window, stride=stride, ep=ep)
    if as_json:
        echo_json(result)
        return
    lines = [f"perplexity of {result['model_path']} on {result['tokens_scored']} tokens ({result['windows']} windows "
             f"of {result['window']}, stride {result['stride']}; ep {result['ep']}): {result['perplexity']:.4f}"]
    if reference:
        lines.append(f"  reference {result['reference']}: {result['reference_perplexity']:.4f} (increase "
                     f"{result['perplexity_increase']:+.4f}); next-token top-1 agreement "
                     f"{100 * result['top1_agreement']:.2f}%, mean KL {result['mean_kl']:.4f} nats")
    lines += [f"warning: {w}" for w in result["warnings"]]
    click.echo("\n".join(lines))


def format_eval(result: dict[str, Any]) -> str:
    """The human summary of one evaluation."""
    from onnxq.report.tables import fmt_cos, fmt_num, fmt_pct

    acc = result["accuracy"]
    lines = [f"evaluated {result['model_path']} on {result['samples']} samples (ep {result['ep']})"]
    if acc["labels_key"] is None:
        lines.append("  accuracy: no labels in the data")
    else:
        lines.append(
            f"  accuracy (labels {acc['labels_key']!r}): top-1 {fmt_pct(acc['top1'])}, "
            f"top-5 {fmt_pct(acc['top5'])}"
        )
    fid = result["fidelity"]
    if fid:
        lines.append(f"  fidelity against {fid['reference']}:")
        for o in fid["outputs"]:
            cos = o["cosine"]
            sqnr = (
                f"{o['sqnr_db']:.2f} dB"
                if o["sqnr_db"] is not None
                else ("inf (identical)" if o["max_abs_error"] == 0 else "undefined")
            )
            lines.append(
                f"    {o['name']}: top-1 agreement {fmt_pct(o['top1_agreement'])}, SQNR {sqnr}, "
                f"cosine {fmt_cos(cos['mean_per_sample'])} per sample / {fmt_cos(cos['overall'])} overall, "
                f"max |err| {fmt_num(o['max_abs_error'])} ({_peak_share(o)} of max |ref|), "
                f"mean |err| {fmt_num(o['mean_abs_error'])}; allclose needs atol {fmt_num(o['min_atol'])} "
                f"(rtol alone: {_rtol_text(o)})"
            )
    if result.get("checks"):
        from onnxq.measure.checks import describe_verdict

        lines.append(f"  checks: {'passed' if result['checks']['passed'] else 'FAILED'}")
        lines += [f"    {describe_verdict(r)}" for r in result["checks"]["results"]]
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)


def _peak_share(output: dict[str, Any]) -> str:
    share = output.get("max_error_vs_peak")
    return "-" if share is None else f"{100 * share:.3g}%"


def _rtol_text(output: dict[str, Any]) -> str:
    """``min_rtol`` with what sets it: the element with the smallest |ref| that differs."""
    if output["min_rtol"] is None:
        return "none covers it: ref is 0 where outputs differ"
    return f"{output['min_rtol']:.3g}, set by the smallest |ref| that differs"
