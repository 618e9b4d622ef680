"""``evaluate``: accuracy against labels and fidelity against a reference model, measured on a real EP.

The model (and the reference, on the same EP and the same batches) is run batch by batch; only running
sums are kept (see :mod:`onnxq.measure.metrics` for what each number means and its conventions for ties, zeros
and infinities), so memory does not grow with the data set.

Accuracy is taken on the model's first output, which must hold class scores [N, classes] (trailing axes
of size 1, as in [N, classes, 1, 1], are squeezed). A graph with a fixed batch size gets its short last
batch padded with copies of the last sample; the padded rows' outputs are dropped, so every sample counts
once and ``samples`` is always the size of the data set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxq.data import LABEL_KEYS, Dataset, open_dataset
from onnxq.data_files import max_data_bytes
from onnxq.errors import ConfigError, DataError, OnnxqError
from onnxq.measure.metrics import OutputFidelity, TopKAccuracy, squeeze_trailing_ones
from onnxq.model import load_model
from onnxq.runtime.session import SessionSpec, create_session, normalize_ep


class NonFiniteOutputError(OnnxqError):
    """A model produced NaN or Inf on valid, finite inputs, so no metric of it would mean anything."""


def evaluate(
    model_path: str | os.PathLike,
    data: Any,
    *,
    labels_key: str | None = None,
    reference: str | os.PathLike | None = None,
    ep: str = "cpu",
    batch_size: int | None = None,
    allow_fallback: bool = False,
) -> dict[str, Any]:
    """Run ``model_path`` on ``data`` (any source :func:`onnxq.data.open_dataset` takes) on ``ep``.

    Returns ``{"model", "model_path", "ep", "samples", "accuracy": {"top1", "top5", "labels_key"},
    "fidelity": None | {"reference", "outputs": [per-output metrics]}}``. Accuracy values are None when the
    data has no labels (top5 also when there are fewer than 5 classes). ``warnings`` lists what the placement
    check found (with ``allow_fallback``, the real split of nodes over EPs). Raises an OnnxqError subclass for
    bad data, a reference whose inputs or outputs do not match, an unavailable EP or one that did not receive
    the nodes (unless ``allow_fallback``), or NaN/Inf in the outputs.
    """
    ep = normalize_ep(ep)
    model = load_model(model_path)
    dataset = open_dataset(data, model, labels_key=labels_key)
    bs = dataset.check_batch_size(batch_size)
    spec = SessionSpec(ep=ep, allow_fallback=allow_fallback)
    runner = create_session(model_path, spec)
    session = runner.session
    warnings = list(runner.warnings)
    ref_session = None
    if reference is not None:
        ref_model = load_model(reference)
        _check_reference_io(model, ref_model, model_path, reference)
        ref_runner = create_session(reference, spec)
        ref_session = ref_runner.session
        warnings += [f"reference: {w}" for w in ref_runner.warnings]
    out_names = [o.name for o in session.get_outputs()]
    accuracy = TopKAccuracy((1, 5)) if dataset.labels is not None else None
    fidelity = {name: OutputFidelity(name) for name in out_names} if ref_session is not None else None
    for start, n, feeds in padded_batches(dataset, bs):
        outs = _run(session, feeds, n, model_path, start)
        if accuracy is not None:
            scores = class_scores(outs[0], n, out_names[0], model_path)
            labels = dataset.labels[start : start + n]
            _check_labels(labels, scores.shape[1], start)
            accuracy.update(scores, labels)
        if fidelity is not None:
            ref_names = [o.name for o in ref_session.get_outputs()]
            refs = dict(zip(ref_names, _run(ref_session, feeds, n, reference, start), strict=True))
            for name, out in zip(out_names, outs, strict=True):
                _check_same_shape(out, refs[name], name, start)
                fidelity[name].update(out, refs[name], n)
    return {
        "model": Path(model_path).stem,
        "model_path": str(model_path),
        "ep": ep,
        "samples": len(dataset),
        "accuracy": {
            "top1": accuracy.result(1) if accuracy else None,
            "top5": accuracy.result(5) if accuracy else None,
            "labels_key": _labels_key_used(data, dataset, labels_key),
        },
        "fidelity": None
        if fidelity is None
        else {"reference": str(reference), "outputs": [f.result() for f in fidelity.values()]},
        "ep_nodes": dict(runner.ep_nodes),
        "warnings": warnings,
    }


def padded_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """``(first sample index, real samples, feeds)`` per batch, covering every sample exactly once.

    Where the graph fixes the batch size, a short last batch is padded to ``batch_size`` by repeating its
    last sample; callers keep only the first ``real samples`` rows of each output.
    """
    total = len(dataset)
    fixed = any(spec.fixed_batch for spec in dataset.specs)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        feeds = {name: arr[start:stop] for name, arr in dataset.arrays.items()}
        n = stop - start
        if fixed and n < batch_size:
            _check_padding(feeds, batch_size - n, batch_size)
            feeds = {
                k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, axis=0)]) for k, v in feeds.items()
            }
        yield start, n, feeds


def _check_padding(feeds: dict[str, np.ndarray], rows: int, batch_size: int) -> None:
    """Refuse padding that would allocate more than a data file may hold (a graph that fixes an absurd batch)."""
    needed = sum(rows * arr[:1].nbytes for arr in feeds.values())
    if needed > max_data_bytes():
        raise DataError(
            f"the graph fixes the batch size to {batch_size:,}; padding the last batch to it would allocate "
            f"{needed:,} bytes, more than the {max_data_bytes():,} bytes allowed for data",
            hint="re-export the model with a dynamic (or realistic) batch axis",
        )


def _quiet_run_options() -> Any:
    """RunOptions that keep ORT's logger quiet: a failed run is raised (and reported) with the same text."""
    import onnxruntime as ort

    from onnxq.runtime.session import ORT_QUIET

    options = ort.RunOptions()
    options.log_severity_level = ORT_QUIET
    return options


def _run(session: Any, feeds: dict[str, np.ndarray], n: int, where: Any, start: int) -> list[np.ndarray]:
    """Run one batch; keep the first ``n`` rows (dropping padding); refuse NaN or Inf in the outputs."""
    try:
        outs = session.run(None, feeds, _quiet_run_options())
    except Exception as exc:  # ORT raises bare RuntimeErrors (InvalidArgument, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{where}: running samples {start}..{start + n - 1} failed: {first}",
            hint="check that the data matches the model's inputs (`onnxq inspect MODEL`), or try --batch 1",
        ) from exc
    names = [o.name for o in session.get_outputs()]
    fed = len(next(iter(feeds.values())))
    kept = []
    for name, out in zip(names, outs, strict=True):
        out = np.asarray(out)
        if fed > n:  # padded batch: drop the padding rows, which needs a batch axis to find them
            if out.ndim == 0 or out.shape[0] != fed:
                raise ConfigError(
                    f"{where}: output {name!r} has shape {list(out.shape)} for a padded batch of {fed}, "
                    f"so the padding cannot be dropped",
                    hint=f"use a batch size that divides the {start + n} samples, or a dynamic-batch model",
                )
            out = out[:n]
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            raise NonFiniteOutputError(
                f"{where}: output {name!r} holds {int((~np.isfinite(out)).sum())} NaN/Inf value(s) for "
                f"samples {start}..{start + n - 1}, on finite inputs",
                hint="the model overflows or is broken; for a quantized model, check its scales and compare "
                "with the float model via `onnxq inspect`",
            )
        kept.append(out)
    return kept


def class_scores(out: np.ndarray, n: int, name: str, where: Any) -> np.ndarray:
    """The output as [n, classes], squeezing trailing axes of size 1; ConfigError if it is not scores."""
    squeezed = squeeze_trailing_ones(out)
    if (
        squeezed.ndim != 2
        or squeezed.shape[0] != n
        or squeezed.shape[1] < 2
        or not np.issubdtype(squeezed.dtype, np.floating)
    ):
        raise ConfigError(
            f"{where}: accuracy needs class scores [N, classes] in the first output, but {name!r} is "
            f"{out.dtype} {list(out.shape)} for {n} sample(s)",
            hint="evaluate against a reference only (drop the labels from the data), or reorder the outputs",
        )
    return squeezed


def _check_labels(labels: np.ndarray, classes: int, start: int) -> None:
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"label {int(labels[i])} of sample {start + i} is outside the model's {classes} classes "
            f"(0..{classes - 1}); {int(bad.sum())} bad label(s) in this batch",
            hint="check that the labels are class indices for this model (0-based)",
        )


def _check_reference_io(model: onnx.ModelProto, ref: onnx.ModelProto, path: Any, ref_path: Any) -> None:
    """The reference must take the same inputs and produce (at least) every output of the model, by name."""
    inits = {t.name for t in model.graph.initializer}
    ref_inits = {t.name for t in ref.graph.initializer}
    ins = sorted(i.name for i in model.graph.input if i.name not in inits)
    ref_ins = sorted(i.name for i in ref.graph.input if i.name not in ref_inits)
    if ins != ref_ins:
        raise ConfigError(
            f"reference {ref_path} takes inputs {ref_ins}, but {path} takes {ins}",
            hint="the reference must be the float model this one was made from",
        )
    ref_outs = {o.name for o in ref.graph.output}
    missing = [o.name for o in model.graph.output if o.name not in ref_outs]
    if missing:
        raise ConfigError(
            f"reference {ref_path} has no output(s) {missing} of {path}; it has {sorted(ref_outs)}",
            hint="outputs are matched by name; pass the float model this one was made from",
        )


def _check_same_shape(out: np.ndarray, ref: np.ndarray, name: str, start: int) -> None:
    if out.shape != ref.shape:
        raise ConfigError(
            f"output {name!r} has shape {list(out.shape)} but the reference's has {list(ref.shape)} "
            f"(batch starting at sample {start})",
            hint="the reference must be the float model this one was made from",
        )


def _labels_key_used(source: Any, dataset: Dataset, labels_key: str | None) -> str | None:
    """The name of the label array the data set's labels came from (None when it has none)."""
    if dataset.labels is None:
        return None
    if labels_key is not None:
        return labels_key
    found = getattr(dataset, "labels_key", None)  # newer Datasets record it themselves
    if found is not None:
        return found
    keys = _source_keys(source)
    inputs = {s.name for s in dataset.specs}
    # open_dataset picked the first of LABEL_KEYS that names no input; the same rule recovers it
    return next((k for k in LABEL_KEYS if k in keys and k not in inputs), None)


def _source_keys(source: Any) -> list[str]:
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".npz":
        with np.load(source, allow_pickle=False) as npz:
            return list(npz.files)
    if isinstance(source, dict):
        return list(source)
    return []
