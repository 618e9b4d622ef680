"""Sweep tasks as Ray tasks, on a local Ray instance or a cluster (the optional ``sweep`` extra).

Ray is imported only here, and only when a sweep asks for it; without Ray installed that is an error whose
hint is ``pip install 'onnxq[sweep]'``, never a quiet fall back to another executor. Without an address a
local instance is started (``num_cpus=jobs``, or every core) and shut down at the end; ``auto`` or
``ray://HOST:PORT`` joins a running cluster and leaves it running.

Each node is one scheduler node with as many slots as it has CPUs. A task is pinned to the node the
scheduler chose (``NodeAffinitySchedulingStrategy``, not soft) and asks Ray for the CPUs it holds there:
one for a quantization or an evaluation, all of the node's for a benchmark, so that Ray itself keeps
anything else of this sweep off a node while it benchmarks. Ray's own retries are off (``max_retries=0``):
a task whose worker or node died comes back as lost, and the scheduler reruns it, counting the attempts in
the report. Model files and data travel through the shared paths of the spec and OUT, not the object store:
every node must mount them at the same path (a task that cannot see them fails with that hint).
"""

from __future__ import annotations

from typing import Any

from onnxq.errors import ConfigError
from onnxq.sweep.executors import Completion, Node


def import_ray() -> Any:
    """The ray module; ConfigError with the install hint when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the sweep asks for Ray (--ray or --address), and Ray is not installed",
                          hint="pip install 'onnxq[sweep]'  (or run without --ray: --jobs N uses a local process "
                          "pool)") from exc  # fmt: skip
    return ray


def _run_on_ray(payload: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: run_task, with the Ray node id added to the worker's identity."""
    import ray

    from onnxq.sweep.tasks import run_task

    reply = run_task(payload)
    reply["worker"]["node_id"] = ray.get_runtime_context().get_node_id()
    return reply


class RayExecutor:
    """Tasks on Ray nodes; ``address`` None starts a local instance with ``jobs`` CPUs (None: all)."""

    kind = "ray"

    def __init__(self, address: str | None = None, jobs: int | None = None) -> None:
        ray = import_ray()
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                                      "logging_level": "warning", "configure_logging": False}  # fmt: skip
            if address is None:
                kwargs["num_cpus"] = jobs
            try:
                ray.init(**kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"cannot connect to the Ray cluster at {address}: {exc}",
                                  hint="start it with `ray start --head`, or check the address "
                                  "(auto, or ray://HOST:10001)") from exc  # fmt: skip
        self.address = address
        self._remote = ray.remote(_run_on_ray)
        self._refs: dict[Any, str] = {}

    def nodes(self) -> list[Node]:
        """The alive nodes with at least one CPU, each with its CPUs as slots."""
        found = []
        for n in self._ray.nodes():
            cpus = int(n.get("Resources", {}).get("CPU", 0))
            if n.get("Alive") and cpus >= 1:
                found.append(Node(n["NodeID"], n.get("NodeManagerHostname", "?"), cpus))
        return found

    def submit(self, task_id: str, payload: dict[str, Any], node: Node, slots: int) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(node_id=node.id, soft=False)
        ref = self._remote.options(num_cpus=slots, scheduling_strategy=strategy, max_retries=0,
                                   name=task_id).remote(payload)  # fmt: skip
        self._refs[ref] = task_id

    def wait(self, timeout: float) -> list[Completion]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        return [self._collect(ref) for ref in ready]

    def _collect(self, ref: Any) -> Completion:
        from ray.exceptions import RayError, RayTaskError

        task_id = self._refs.pop(ref)
        try:
            return Completion(task_id, self._ray.get(ref))
        except RayTaskError as exc:  # run_task does not raise: the payload or reply did not cross, a bug
            return Completion(task_id, {"ok": False, "error": f"internal error: {str(exc).splitlines()[0]}",
                                        "hint": "this is an onnxq bug: report it", "worker": {}})  # fmt: skip
        except RayError as exc:  # the worker, its node or the object died: the scheduler may retry
            return Completion(task_id, None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address or "local", "ray_version": self._ray.__version__}

    def close(self) -> None:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owns:
            self._ray.shutdown()
