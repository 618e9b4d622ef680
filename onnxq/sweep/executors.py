"""Where sweep tasks run: in this process (serial), in a local pool of worker processes, or on Ray.

An executor offers nodes (a machine with a number of task slots), runs a task's payload on a node it is
given, and reports completions. It does not choose what runs where: :mod:`onnxq.sweep.scheduler` does, the
same way for every executor, so that the same spec gives the same results serially, on the pool and on Ray.

A completion is ``ok`` (the reply of :func:`onnxq.sweep.tasks.run_task`, which holds a task's own failure
too) or ``lost``: the worker died under the task (killed, out of memory, a crash in native code), and the
scheduler may run it again. The pool starts its workers with ``spawn`` (no fork of a process that holds
ONNX Runtime's thread pools) and replaces a worker that died.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from onnxq.sweep.tasks import run_task


@dataclass(frozen=True)
class Node:
    id: str
    host: str
    slots: int


@dataclass
class Completion:
    task_id: str
    reply: dict[str, Any] | None  # None: the worker was lost
    lost_reason: str | None = None


class Executor(Protocol):
    kind: str

    def nodes(self) -> list[Node]: ...

    def submit(self, task_id: str, payload: dict[str, Any], node: Node, slots: int) -> None: ...

    def wait(self, timeout: float) -> list[Completion]: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """One slot, in this process: each task runs inside :meth:`wait`. A crash in native code ends the sweep
    (finished tasks are kept in OUT); the pool and Ray isolate that."""

    kind = "serial"

    def __init__(self) -> None:
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self._node = Node("local", socket.gethostname(), 1)

    def nodes(self) -> list[Node]:
        return [self._node]

    def submit(self, task_id: str, payload: dict[str, Any], node: Node, slots: int) -> None:
        self._queue.append((task_id, payload))

    def wait(self, timeout: float) -> list[Completion]:
        if not self._queue:
            return []
        task_id, payload = self._queue.pop(0)
        return [Completion(task_id, run_task(payload))]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "jobs": 1}

    def close(self) -> None:
        self._queue.clear()


def _pool_worker(conn: Connection) -> None:
    """A pool worker's loop: a payload in, its reply out, until None or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the workers
    while True:
        try:
            payload = conn.recv()
        except EOFError:
            return
        if payload is None:
            return
        conn.send(run_task(payload))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task_id: str | None = None


class PoolExecutor:
    """``jobs`` worker processes on this machine (one node with ``jobs`` slots)."""

    kind = "pool"

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._node = Node("local", socket.gethostname(), jobs)

    def nodes(self) -> list[Node]:
        return [self._node]

    def submit(self, task_id: str, payload: dict[str, Any], node: Node, slots: int) -> None:
        for dead in [w for w in self._workers if w.task_id is None and not w.process.is_alive()]:
            self._workers.remove(dead)  # died between tasks: nothing was lost
            dead.conn.close()
        worker = next((w for w in self._workers if w.task_id is None), None) or self._start_worker()
        worker.task_id = task_id
        try:
            worker.conn.send(payload)
        except OSError:  # it died just now: wait() sees its sentinel and reports the task lost
            pass

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_pool_worker, args=(child,), daemon=True, name="onnxq-sweep-worker")
        process.start()
        child.close()
        self._workers.append(_Worker(process, parent))
        return self._workers[-1]

    def wait(self, timeout: float) -> list[Completion]:
        busy = [w for w in self._workers if w.task_id is not None]
        if not busy:
            return []
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
        done = []
        for w in busy:
            if w.conn in ready or w.process.sentinel in ready:
                done.append(self._collect(w))
        return done

    def _collect(self, w: _Worker) -> Completion:
        task_id, w.task_id = w.task_id, None
        assert task_id is not None
        try:
            if w.conn.poll():
                return Completion(task_id, w.conn.recv())
        except (EOFError, OSError):
            pass
        w.process.join(5)
        self._workers.remove(w)
        w.conn.close()
        return Completion(task_id, None, f"worker pid {w.process.pid} died ({_exit_text(w.process.exitcode)})")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "jobs": self.jobs}

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self._workers:
            w.process.join(2 if w.task_id is None else 0)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self._workers.clear()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
