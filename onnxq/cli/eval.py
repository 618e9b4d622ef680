"""``onnxq eval``: accuracy against labels and fidelity against a reference model, on a real EP."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from onnxq.cli.ep_flags import ep_option_flags, given_ep_options
from onnxq.runtime.eps import EP_NAMES


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
    "--ep",
    default="cpu",
    show_default=True,
    type=click.Choice(EP_NAMES),
    help="Execution provider for the model and the reference.",
)
@click.option("--allow-fallback", is_flag=True, help="Go on when nodes fall back to another EP; report the split.")
@ep_option_flags(("cuda",), leave_out=("cuda_graph",))  # evaluation feeds a new batch each run: no CUDA graph
@click.option(
    "--batch", "--batch-size", "batch", type=int, help="Batch size (default: the model's fixed batch, or 1)."
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Also write a report: .json, .md or .html by the suffix.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_cmd(model, data, labels_key, reference, ep, allow_fallback, batch, report_path, as_json, **ep_options):
    """Evaluate MODEL on DATA: top-1/top-5 accuracy against labels, and fidelity against --reference."""
    from onnxq.measure.evaluate import evaluate
    from onnxq.report.document import build_report, check_report_path, write_report

    if report_path:
        # fail before the evaluation, not after it
        check_report_path(report_path, inputs=[("the model", model), ("the data", data), ("the reference", reference)])
    result = evaluate(
        model,
        data,
        labels_key=labels_key,
        reference=reference,
        ep=ep,
        batch_size=batch,
        allow_fallback=allow_fallback,
        ep_options=given_ep_options(ep_options),
    )
    if report_path:
        write_report(report_path, build_report(eval=[result], command=["onnxq", *sys.argv[1:]]))
    click.echo(json.dumps(result, indent=2) if as_json else format_eval(result))
    if report_path and not as_json:
        click.echo(f"report written to {report_path}")


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
            rtol = (
                fmt_num(o["min_rtol"])
                if o["min_rtol"] is not None
                else "none (ref is 0 where outputs differ)"
            )
            lines.append(
                f"    {o['name']}: top-1 agreement {fmt_pct(o['top1_agreement'])}, SQNR {sqnr}, "
                f"cosine {fmt_cos(cos['mean_per_sample'])} per sample / {fmt_cos(cos['overall'])} overall, "
                f"max |err| {fmt_num(o['max_abs_error'])}, mean |err| {fmt_num(o['mean_abs_error'])}, "
                f"needs atol {fmt_num(o['min_atol'])} or rtol {rtol}"
            )
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)
