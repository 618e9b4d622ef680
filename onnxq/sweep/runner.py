"""``run_sweep``: a spec's cells on an executor, into OUT, with the report written at the end.

OUT holds the cache (every finished task, written as it finishes), the quantized models and the reports
(``sweep.json``, ``sweep.html``, ``sweep.md``). A second run with the same OUT reruns only the tasks whose
inputs changed or that did not finish; ``force`` reruns everything. The inputs are only read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from onnxq.errors import ConfigError, OnnxqError, OutputPathError
from onnxq.sweep.cache import OutLock, ResultStore
from onnxq.sweep.executors import Executor, PoolExecutor, SerialExecutor
from onnxq.sweep.hints import SPEC_HINT
from onnxq.sweep.plan import TaskInputs, plan_cells, plan_tasks
from onnxq.sweep.progress import SweepProgress
from onnxq.sweep.report import build_sweep_report, write_sweep_reports
from onnxq.sweep.scheduler import Scheduler, TaskState
from onnxq.sweep.spec import SweepSpec, load_spec


class CellsFailed(OnnxqError):
    """The sweep finished, and some cells failed (their errors are in the report): exit code 3."""

    exit_code = 3


@dataclass
class SweepOutcome:
    report: dict[str, Any]
    paths: dict[str, Path]
    states: dict[str, TaskState]

    @property
    def failed_cells(self) -> int:
        return int(self.report["summary"]["failed"])

    def raise_for_failures(self) -> None:
        """CellsFailed naming the first failure, when a cell failed."""
        if not self.failed_cells:
            return
        first = next(e for c in self.report["cells"] for e in c["errors"] if not e["error"].startswith("skipped:"))
        raise CellsFailed(f"{self.failed_cells} of {self.report['summary']['cells']} cells failed; first, "
                          f"{first['task']}: {first['error']}", hint=f"the failures are listed in {self.paths['html']};"
                          " a rerun on the same --out runs only what failed or did not finish")  # fmt: skip


def make_executor(jobs: int | None = None, *, use_ray: bool = False, address: str | None = None) -> Executor:
    """Serial (``jobs`` 1 or None, no Ray), a local pool of ``jobs`` processes, or Ray (local, or ``address``)."""
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}", hint=SPEC_HINT)
    if address is not None or use_ray:
        if address is not None and jobs is not None:
            raise ConfigError("--jobs sizes a local Ray instance; with --address the cluster has its own CPUs",
                              hint="drop --jobs, or drop --address to start a local instance")  # fmt: skip
        from onnxq.sweep.ray_executor import RayExecutor

        return RayExecutor(address, jobs)
    return SerialExecutor() if (jobs or 1) == 1 else PoolExecutor(jobs or 1)


def run_sweep(spec: SweepSpec | str | os.PathLike, out: str | os.PathLike, *, executor: Executor | None = None,
              retries: int = 2, force: bool = False, progress: bool = True, stream: TextIO | None = None,
              command: list[str] | None = None) -> SweepOutcome:  # fmt: skip
    """Run every cell of ``spec`` (a SweepSpec or a spec file) into ``out``; the report and its paths.

    ``executor`` defaults to serial; it is closed at the end. A failing cell does not stop the others: the
    report records its error and :attr:`SweepOutcome.failed_cells` counts them. Raises ConfigError or
    OutputPathError before any work for a bad spec, an unusable OUT, or an EP this machine lacks (local
    executors; on Ray each worker checks its own).
    """
    spec = spec if isinstance(spec, SweepSpec) else load_spec(spec)
    out = prepare_out(Path(out))
    executor = executor or SerialExecutor()
    try:
        if executor.kind != "ray":
            _check_eps(spec)
        with OutLock(out):
            store = ResultStore(out)
            store.prepare()
            return _run(spec, out, store, executor, retries, force, SweepProgress(enabled=progress, stream=stream),
                        command)  # fmt: skip
    finally:
        executor.close()


def _run(spec: SweepSpec, out: Path, store: ResultStore, executor: Executor, retries: int, force: bool,
         progress: SweepProgress, command: list[str] | None) -> SweepOutcome:  # fmt: skip
    start = time.perf_counter()
    cells = plan_cells(spec)
    scheduler = Scheduler(plan_tasks(spec, cells), TaskInputs(spec, store), store, executor, retries=retries,
                          force=force, on_event=progress)  # fmt: skip
    states = scheduler.run()
    progress.close(states)
    described = {**executor.describe(), "nodes": [n.__dict__ for n in scheduler.nodes], "retries": retries}
    report = build_sweep_report(spec, cells, states, executor=described, wall_s=time.perf_counter() - start,
                                executed=scheduler.executed, command=command)  # fmt: skip
    return SweepOutcome(report, write_sweep_reports(out, report), states)


def prepare_out(out: Path) -> Path:
    """OUT created if missing (with its parents) and checked writable; a file in its place is refused."""
    from onnxq.model_files import check_writable_folder

    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--out {out} is a file, and a sweep writes a folder",
                              hint="give a folder (it is created if missing)")  # fmt: skip
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the sweep folder {out}: {exc.strerror or exc}",
                              hint="choose a folder you can write to") from exc  # fmt: skip
    check_writable_folder(out / "sweep.json", "sweep report")
    return out.resolve()


def _check_eps(spec: SweepSpec) -> None:
    from onnxq.runtime.session import check_available

    for ep in spec.eps:
        check_available(ep)
