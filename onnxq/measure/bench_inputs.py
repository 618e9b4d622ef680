"""The models and inputs that bench measures: loading, names, size on disk, the batch and the feeds, and
for a graph that fixes batch 1, the checked symbolic-batch copy measured at other batches."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxq.errors import ConfigError, DataError

if TYPE_CHECKING:
    from onnxq.measure.bench import BenchConfig


@dataclass
class BenchModel:
    """A model as bench measures it; ``path`` may be a copy of the user's file (``shown_path``)."""

    name: str
    path: Path  # what the session loads
    proto: Any  # onnx.ModelProto
    size_bytes: int
    shown_path: Path | None = None  # what the entry names, where ``path`` is a copy (a symbolic batch)
    note: str | None = None  # why a copy was measured
    rebatched: BenchModel | None = None  # the symbolic-batch copy, made once


def load_bench_model(path: str | os.PathLike) -> BenchModel:
    from onnxq.model import load_model

    path = Path(path)
    proto = load_model(path)
    return BenchModel(path.stem, path, proto, model_size_bytes(path))


def for_batch(model: BenchModel, batch: int | None, config: BenchConfig, work: Path) -> BenchModel:
    """``model``, or for a batch other than 1 of a graph that fixes batch 1, its checked symbolic-batch copy."""
    from onnxq.data import input_specs
    from onnxq.model import save_model
    from onnxq.rebatch import rebatch

    fixed = next((s.fixed_batch for s in input_specs(model.proto) if s.fixed_batch), None)
    if batch is None or batch == 1 or fixed != 1:
        return model  # a graph fixing another batch is refused by resolve_batch, naming it
    if model.rebatched is None:
        shapes = {k: (1, *v[1:]) for k, v in config.shapes.items() if v}
        done = rebatch(model.proto, shapes, seed=config.seed)
        path = save_model(done.model, work / f"{len(list(work.iterdir()))}-{model.path.name}")
        model.rebatched = BenchModel(model.name, path, done.model, model.size_bytes, model.path, done.note())
    return model.rebatched


def disambiguate_names(models: list[BenchModel]) -> None:
    """Name a model by its file stem; by folder/file where that is ambiguous or just "model"."""
    stems = [m.name for m in models]
    for m in models:
        if stems.count(m.name) > 1 or m.name == "model":
            m.name = f"{m.path.resolve().parent.name}/{m.path.name}"


def model_size_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk: the .onnx file plus every external-data file it references (each counted once)."""
    import onnx

    from onnxq.model import iter_tensors

    path = Path(path)
    head = onnx.load(str(path), load_external_data=False)
    files = set()
    for tensor in iter_tensors(head):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            files.add((path.parent / location).resolve())
    return path.stat().st_size + sum(f.stat().st_size for f in files if f.is_file())


def resolve_batch(
    specs: list[Any], batch: int | None, shapes: Mapping[str, tuple[int, ...]], where: str
) -> int:
    """The batch to measure: ``batch`` if given (checked against a fixed graph batch), else the graph's
    fixed batch, else the first --shape's axis 0, else 1."""
    fixed = next((s.fixed_batch for s in specs if s.fixed_batch), None)
    if batch is not None:
        if fixed is not None and fixed != batch:
            raise ConfigError(
                f"{where} fixes the batch size to {fixed} in the graph; batch {batch} cannot run",
                hint=f"use --batch {fixed}, or re-export the model with a dynamic batch axis",
            )
        return batch
    if fixed is not None:
        return fixed
    given = next((shapes[s.name] for s in specs if s.name in shapes and len(shapes[s.name]) > 0), None)
    return int(given[0]) if given else 1


def make_feeds(model: BenchModel, batch: int | None, config: BenchConfig) -> tuple[dict[str, np.ndarray], int]:
    """Inputs for one batch: from ``config.data`` if given, else random with --shape dims; and the batch."""
    from onnxq.data import input_specs, open_dataset, random_feeds

    specs = input_specs(model.proto)
    unknown = sorted(set(config.shapes) - {s.name for s in specs})
    if unknown:
        raise ConfigError(
            f"--shape names {unknown}, which {model.name} does not have as inputs",
            hint=f"its inputs are {[s.name for s in specs]}",
        )
    if config.data is not None:
        dataset = open_dataset(config.data, model.proto)
        size = dataset.check_batch_size(batch)
        if len(dataset) < size:
            raise DataError(
                f"{dataset.source} holds {len(dataset)} samples, fewer than the batch size {size}",
                hint="give more samples, or a smaller --batch",
            )
        return next(dataset.batches(size)), size
    size = resolve_batch(specs, batch, config.shapes, model.name)
    shapes = {}
    for spec in specs:
        if spec.name in config.shapes:
            shapes[spec.name] = _checked_shape(spec, config.shapes[spec.name], size, model.name)
    _check_feed_bytes(specs, size, shapes, model.name)
    try:
        return random_feeds(specs, size, shapes, seed=config.seed), size
    except DataError as exc:  # say which model: several may be measured at once
        raise DataError(f"{model.name}: {exc.message}", hint=exc.hint) from exc


def _check_feed_bytes(specs: list[Any], batch: int, shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Refuse random inputs larger than a data file may be (a graph that fixes an absurd dim)."""
    from onnxq.data_files import max_data_bytes

    total = 0
    for spec in specs:
        # the shape random_feeds will make (an unknown non-batch dim is refused there; count it as 1 here)
        dims = shapes.get(spec.name) or [
            d if isinstance(d, int) else batch if axis == 0 else 1 for axis, d in enumerate(spec.shape)
        ]
        total += math.prod(dims) * spec.dtype.itemsize
    if total > max_data_bytes():
        raise DataError(
            f"{where}: one batch of random inputs would take {total:,} bytes, more than the {max_data_bytes():,} "
            "bytes allowed for data",
            hint="use a smaller --batch or --shape, or re-export the model with realistic dims",
        )


def _checked_shape(spec: Any, shape: tuple[int, ...], batch: int, where: str) -> tuple[int, ...]:
    """``shape`` with axis 0 set to ``batch``; refused when its rank or a fixed dim contradicts the graph."""
    if len(shape) != len(spec.shape):
        raise ConfigError(
            f"--shape {spec.name}: {len(shape)} dims given, but {where} declares rank "
            f"{len(spec.shape)} {list(spec.shape)}",
            hint="give one value per dimension",
        )
    shape = (batch, *shape[1:]) if shape else shape
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if isinstance(want, int) and got != want:
            raise ConfigError(
                f"--shape {spec.name}: axis {axis} is {got}, but {where} fixes it to {want}",
                hint=f"use {want} there",
            )
    return tuple(int(d) for d in shape)
