"""``onnxq sweep``: models x recipes x EPs from a spec, as one resumable job, serially, on a pool or on Ray."""

from __future__ import annotations

import sys
from typing import Any

import click


@click.command("sweep")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the cache, the quantized models and the reports (created if missing).")  # fmt: skip
@click.option("-j", "--jobs", type=int, help="Worker processes (default 1: serial, in this process); with --ray, "
              "the CPUs of the local Ray instance (default: all).")  # fmt: skip
@click.option("--ray", "use_ray", is_flag=True, help="Run the tasks on Ray (pip install 'onnxq[sweep]'); "
              "a local instance unless --address is given.")  # fmt: skip
@click.option("--address", help="Join a running Ray cluster: auto, or ray://HOST:PORT (implies --ray).")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="How many times to rerun a task whose worker died.")  # fmt: skip
@click.option("--force", is_flag=True, help="Ignore the cache: run every task again.")
@click.option("--progress/--no-progress", default=True, help="A line per finished task on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the sweep's JSON report instead of the table.")
def sweep_cmd(spec: str, out: str, jobs: int | None, use_ray: bool, address: str | None, retries: int,
              force: bool, progress: bool, as_json: bool) -> None:  # fmt: skip
    """Quantize every model of SPEC with every recipe, evaluate and benchmark each on every EP, into --out.

    A rerun on the same --out does only the tasks whose inputs changed or that did not finish. Exits with 3
    when the sweep finished but some cells failed (the report says which and why).
    """
    from onnxq.sweep import load_spec, make_executor, run_sweep

    parsed = load_spec(spec)  # a bad spec fails before an executor (or Ray) starts
    executor = make_executor(jobs, use_ray=use_ray, address=address)
    outcome = run_sweep(parsed, out, executor=executor, retries=retries, force=force, progress=progress,
                        command=sys.argv)  # fmt: skip
    if as_json:
        import json

        click.echo(json.dumps(outcome.report, indent=2, default=str))
    else:
        click.echo(format_summary(outcome.report))
        for path in outcome.paths.values():
            click.echo(f"report written to {path}")
    outcome.raise_for_failures()


def format_summary(report: dict[str, Any]) -> str:
    """A compact table of the results and the winners, for the terminal."""
    from onnxq.report.tables import fmt_num, fmt_pct

    head = ("model", "recipe", "EP", "batch", "top-1", "agree", "SQNR", "p50 ms", "speedup", "status")
    rows = [head]
    for r in report["results"]:
        speed = "-" if r["speedup_vs_float"] is None else f"{r['speedup_vs_float']:.2f}x"
        batch = "-" if r["batch"] is None else str(r["batch"])
        rows.append((r["model"], r["recipe"], r["ep"], batch, fmt_pct(r["top1"]), fmt_pct(r["agreement"]),
                     fmt_num(r["sqnr_db"]), fmt_num(r["p50_ms"]), speed, r["status"]))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for w in report["winners"]:
        lines.append(f"winner {w['model']} on {w['ep']} batch {w['batch']}: {w['recipe'] or 'none'} ({w['reason']})")
    return "\n".join(lines)
