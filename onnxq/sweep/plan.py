"""The cell plan: every (model, recipe) cell and the tasks it takes, with their dependencies.

A model's cells are its float baseline (recipe ``float``: the model as it is) and one per recipe. A recipe
cell quantizes once; then, on each EP, one evaluation task (accuracy against the labels, fidelity against
the float model on the same EP and data) and one benchmark task (every batch size). The float cell is
evaluated (accuracy only) and benchmarked the same way. Evaluations and quantizations may share a node;
benchmarks are ``exclusive``: they run alone on their node (see :mod:`onnxq.sweep.scheduler`).

A task's key and payload are made when its dependencies are done (:class:`TaskInputs`): an evaluation's key
holds the hash of the quantized model's bytes, which are known only then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxq.sweep.cache import ContentHashes, ResultStore, task_key
from onnxq.sweep.spec import FLOAT, ModelEntry, RecipeEntry, SweepSpec

STAGES = ("quantize", "eval", "bench")


@dataclass(frozen=True)
class Cell:
    model: ModelEntry
    recipe: RecipeEntry | None  # None: the float baseline

    @property
    def recipe_name(self) -> str:
        return FLOAT if self.recipe is None else self.recipe.name

    @property
    def name(self) -> str:
        return f"{self.model.name}/{self.recipe_name}"


@dataclass(frozen=True)
class Task:
    id: str  # "bench resnet_digits/minmax cpu"
    stage: str
    cell: Cell
    ep: str | None = None
    deps: tuple[str, ...] = ()

    @property
    def exclusive(self) -> bool:
        """Benchmarks run alone on their node, so that no neighbour disturbs their timings."""
        return self.stage == "bench"


def plan_cells(spec: SweepSpec) -> list[Cell]:
    """Model-major: each model's float cell, then its recipes in spec order."""
    return [Cell(m, r) for m in spec.models for r in (None, *spec.recipes)]


def plan_tasks(spec: SweepSpec, cells: list[Cell]) -> list[Task]:
    """Every task of every cell, in plan order; a task's ``deps`` are ids of tasks earlier in the list."""
    tasks: list[Task] = []
    evaluate = bool({"accuracy", "fidelity"} & set(spec.metrics))
    for cell in cells:
        deps: tuple[str, ...] = ()
        if cell.recipe is not None:
            tasks.append(Task(f"quantize {cell.name}", "quantize", cell))
            deps = (tasks[-1].id,)
        for ep in spec.eps:
            if evaluate and (cell.recipe is not None or "accuracy" in spec.metrics):
                tasks.append(Task(f"eval {cell.name} {ep}", "eval", cell, ep, deps))
            if "latency" in spec.metrics:
                tasks.append(Task(f"bench {cell.name} {ep}", "bench", cell, ep, deps))
    return tasks


class TaskInputs:
    """Keys and payloads of tasks, from the spec, the content hashes and the results of their dependencies."""

    def __init__(self, spec: SweepSpec, store: ResultStore) -> None:
        self.spec = spec
        self.store = store
        self.hashes = ContentHashes()

    def make(self, task: Task, deps: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        """(key, payload) of ``task``; ``deps`` maps each dependency's id to its result."""
        if task.stage == "quantize":
            return self._quantize(task.cell)
        model_path, model_hash = self._measured_model(task, deps)
        m, spec = task.cell.model, self.spec
        common = {"ep": task.ep, "allow_fallback": spec.allow_fallback, "data": _str(m.data)}
        if task.stage == "eval":
            reference = m.path if task.cell.recipe is not None and "fidelity" in spec.metrics else None
            payload = {**common, "labels": m.labels, "reference": _str(reference)}
            parts = {**payload, "reference": reference and self.hashes.model(reference)}
        else:
            payload = {**common, "batches": list(spec.batches), "bench": dict(spec.bench.__dict__)}
            parts = dict(payload)
        parts.update(stage=task.stage, model=model_hash, data=self.hashes.data(m.data))
        return task_key(parts), {**payload, "stage": task.stage, "model_path": str(model_path)}

    def _quantize(self, cell: Cell) -> tuple[str, dict[str, Any]]:
        recipe, m = cell.recipe, cell.model
        assert recipe is not None
        calib = None if recipe.dynamic else m.calib
        key = task_key({"stage": "quantize", "model": self.hashes.model(m.path), "calib": self.hashes.data(calib),
                        "recipe": recipe.canonical})  # fmt: skip
        payload = {"stage": "quantize", "model_path": str(m.path), "calib": _str(calib), "recipe": recipe.canonical,
                   "recipe_name": recipe.name, "out": str(self.store.model_path(key)),
                   "out_dir": str(self.store.models)}  # fmt: skip
        return key, payload

    def _measured_model(self, task: Task, deps: dict[str, dict[str, Any]]) -> tuple[Path, str]:
        """The model file a measurement runs (the float model, or the cell's quantized model) and its hash."""
        if task.cell.recipe is None:
            return task.cell.model.path, self.hashes.model(task.cell.model.path)
        quantized = deps[task.deps[0]]
        return self.store.model_path(quantized["key"]), quantized["result"]["model_sha256"]


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
