"""The sweep's scheduler: tasks to nodes, results to the cache, retries of lost workers, progress.

One loop for every executor. A task becomes ready when its dependencies are done; its key is made then
(:class:`~onnxq.sweep.plan.TaskInputs`), and a task whose key is in the cache is done at once (``cached``).
Two tasks with the same key (two recipes that give the same model, say) run once: while one runs, the
other waits, then takes its stored result. Ready tasks go to nodes with free slots, in this order:
evaluations, then quantizations (both take one slot and share a node), and a benchmark only on an idle
node, where it takes every slot; so nothing of the sweep runs beside a benchmark, and benchmarks wait
until the node has no shared work left to give it.

A completion is stored at once (atomically), so no finished task is lost whatever dies later. A task that
fails is recorded with its error, and the tasks that depend on it are skipped, naming it; the other cells go
on. A task whose worker died is run again, up to ``retries`` more times; each attempt is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onnxq.sweep.cache import ResultStore
from onnxq.sweep.executors import Completion, Executor, Node
from onnxq.sweep.plan import Task, TaskInputs

PRIORITY = {"eval": 0, "quantize": 1, "bench": 2}


@dataclass
class TaskState:
    task: Task
    status: str = "pending"  # pending, ready, running, done, failed, skipped
    key: str | None = None
    payload: dict[str, Any] | None = None
    record: dict[str, Any] | None = None  # result, worker, wall_s (stored in the cache when done)
    cached: bool = False
    attempts: int = 0
    lost: list[str] = field(default_factory=list)
    node: Node | None = None
    slots: int = 0  # slots it holds on its node while it runs
    error: dict[str, Any] | None = None  # error, hint, traceback

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "skipped")


class Scheduler:
    """Run ``tasks`` on ``executor``; ``on_event(kind, state, states)`` reports starts and ends."""

    def __init__(self, tasks: list[Task], inputs: TaskInputs, store: ResultStore, executor: Executor, *,
                 retries: int = 2, force: bool = False,
                 on_event: Callable[[str, TaskState, dict[str, TaskState]], None] | None = None) -> None:  # fmt: skip
        self.states = {t.id: TaskState(t) for t in tasks}
        self.order = {t.id: i for i, t in enumerate(tasks)}
        self.inputs, self.store, self.executor = inputs, store, executor
        self.retries, self.force = retries, force
        self.on_event = on_event or (lambda kind, state, states: None)
        self.nodes = executor.nodes()
        self.executed = {stage: 0 for stage in PRIORITY}
        self.stored: set[tuple[str, str | None]] = set()  # (stage, key) of the results this run stored

    def run(self) -> dict[str, TaskState]:
        """Until every task is finished; the states by task id."""
        while True:
            self._advance()
            self._dispatch()
            running = [s for s in self.states.values() if s.status == "running"]
            if not running:
                if all(s.finished for s in self.states.values()):
                    return self.states
                self._fail_stranded()
                continue
            for completion in self.executor.wait(timeout=1.0):
                self._complete(completion)

    def _advance(self) -> None:
        """Pending tasks whose dependencies finished become ready (or skipped); ready ones are looked up."""
        changed = True
        while changed:
            changed = False
            for s in self.states.values():
                if s.status != "pending":
                    continue
                deps = [self.states[d] for d in s.task.deps]
                failed = next((d for d in deps if d.status in ("failed", "skipped")), None)
                if failed is not None:
                    s.status, s.error = "skipped", {"error": f"skipped: {failed.task.id} {failed.status}"}
                    self.on_event("end", s, self.states)
                    changed = True
                elif all(d.status == "done" for d in deps):
                    self._make_ready(s, {d.task.id: d.record for d in deps})
                    changed = True

    def _make_ready(self, s: TaskState, deps: dict[str, Any]) -> None:
        try:
            s.key, s.payload = self.inputs.make(s.task, deps)
        except OSError as exc:  # an input vanished or became unreadable since the spec was read
            s.status, s.error = "failed", {"error": f"cannot read the task's inputs: {exc}"}
            self.on_event("end", s, self.states)
            return
        record = None if self.force else self.store.load(s.task.stage, s.key)
        if record is not None:
            s.status, s.record, s.cached = "done", record, True
            self.on_event("end", s, self.states)
        else:
            s.status = "ready"
            s.payload["task"] = s.task.id
            s.payload["marker"] = str(self.store.running / f"{s.key}.json")

    def _dispatch(self) -> None:
        self._reuse_finished_duplicates()
        taken = {(s.task.stage, s.key) for s in self.states.values() if s.status == "running"}
        ready = []
        for s in sorted((s for s in self.states.values() if s.status == "ready"),
                        key=lambda s: (PRIORITY[s.task.stage], self.order[s.task.id])):  # fmt: skip
            if (s.task.stage, s.key) not in taken:  # else a task with its key runs: it waits for the result
                taken.add((s.task.stage, s.key))
                ready.append(s)
        shared = [s for s in ready if not s.task.exclusive]
        exclusive = [s for s in ready if s.task.exclusive]
        for node in self.nodes:
            while self._used(node) < node.slots and shared:
                self._start(shared.pop(0), node, 1)
            if self._used(node) == 0 and exclusive and not shared:
                self._start(exclusive.pop(0), node, node.slots)

    def _reuse_finished_duplicates(self) -> None:
        """Ready tasks whose key another task of this run has stored meanwhile: done, from the cache."""
        for s in self.states.values():
            if s.status == "ready" and (s.task.stage, s.key) in self.stored:
                record = self.store.load(s.task.stage, s.key or "")
                if record is not None:
                    s.status, s.record, s.cached = "done", {**record, "key": s.key}, True
                    self.on_event("end", s, self.states)

    def _used(self, node: Node) -> int:
        """Slots the running tasks hold on ``node``."""
        return sum(s.slots for s in self.states.values() if s.status == "running" and s.node == node)

    def _start(self, s: TaskState, node: Node, slots: int) -> None:
        s.status, s.node, s.slots = "running", node, slots
        s.attempts += 1
        assert s.payload is not None
        self.executor.submit(s.task.id, s.payload, node, slots)
        self.on_event("start", s, self.states)

    def _complete(self, c: Completion) -> None:
        s = self.states[c.task_id]
        assert s.node is not None
        if c.reply is None:
            self._lost(s, c.lost_reason or "the worker was lost")
            return
        self.executed[s.task.stage] += 1
        record = {k: c.reply.get(k) for k in ("result", "worker", "wall_s", "started", "ended", "warnings")}
        record.update(node=s.node.host, node_id=s.node.id, attempts=s.attempts, lost=list(s.lost))
        if c.reply.get("ok"):
            self.store.store(s.task.stage, s.key or "", record)
            self.stored.add((s.task.stage, s.key))
            s.status, s.record = "done", {**record, "key": s.key}
        else:
            s.status, s.record = "failed", record
            s.error = {k: c.reply.get(k) for k in ("error", "hint", "traceback") if c.reply.get(k)}
        self.on_event("end", s, self.states)

    def _lost(self, s: TaskState, reason: str) -> None:
        """A worker died under ``s``: run it again while attempts are left; drop nodes that are gone."""
        s.lost.append(reason)
        if self.store.running.exists() and s.key:
            (self.store.running / f"{s.key}.json").unlink(missing_ok=True)
        self.nodes = self.executor.nodes()
        if s.attempts <= self.retries:
            s.status = "ready"
            self.on_event("retry", s, self.states)
        else:
            s.status = "failed"
            s.error = {"error": f"the worker died {s.attempts} times under this task (last: {reason})",
                       "hint": "see the worker's log; a rerun of the sweep tries it again"}  # fmt: skip
            self.on_event("end", s, self.states)

    def _fail_stranded(self) -> None:
        """Ready tasks that no node can take (the cluster lost every node): failed, with the reason."""
        for s in self.states.values():
            if s.status == "ready":
                s.status = "failed"
                s.error = {"error": "no node left to run this task", "hint": "check the Ray cluster's nodes"}
                self.on_event("end", s, self.states)
