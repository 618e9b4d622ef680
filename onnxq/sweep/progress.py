"""Progress of a sweep on stderr: one line per finished (or retried) task, with the cells done / running /
failed so far; tasks found in the cache are counted, not listed."""

from __future__ import annotations

import sys
from typing import TextIO

from onnxq.sweep.scheduler import TaskState


class SweepProgress:
    """``on_event`` for :class:`~onnxq.sweep.scheduler.Scheduler`; prints nothing when disabled."""

    def __init__(self, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.cached = 0

    def __call__(self, kind: str, state: TaskState, states: dict[str, TaskState]) -> None:
        if not self.enabled or kind == "start":
            return
        if kind == "end" and state.cached:
            self.cached += 1
            return
        task = state.task
        if kind == "retry":
            what = f"worker lost ({state.lost[-1]}); running it again (attempt {state.attempts + 1})"
        elif state.status == "done":
            wall = (state.record or {}).get("wall_s")
            what = f"done in {wall:.1f} s on {state.node.host if state.node else '?'}" if wall is not None else "done"
        else:
            what = f"{state.status}: {(state.error or {}).get('error', '?')}"
        self.stream.write(f"[{counts_line(states)}] {task.id}: {what}\n")
        self.stream.flush()

    def close(self, states: dict[str, TaskState]) -> None:
        if self.enabled:
            self.stream.write(f"sweep: {counts_line(states)}; {self.cached} task(s) from the cache\n")
            self.stream.flush()


def counts_line(states: dict[str, TaskState]) -> str:
    """'cells 3/12 done, 2 running, 1 failed'."""
    cells: dict[str, set[str]] = {}
    for s in states.values():
        cells.setdefault(s.task.cell.name, set()).add(s.status)
    done = sum(statuses == {"done"} for statuses in cells.values())
    failed = sum(bool(statuses & {"failed", "skipped"}) for statuses in cells.values())
    running = sum("running" in statuses and not statuses & {"failed", "skipped"} for statuses in cells.values())
    return f"cells {done}/{len(cells)} done, {running} running, {failed} failed"
