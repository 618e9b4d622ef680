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
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxq.data import LABEL_KEYS, Dataset, FeedsDataset, open_dataset
from onnxq.data_files import max_data_bytes
from onnxq.errors import ConfigError, DataError, OnnxqError
from onnxq.measure.checks import EvalChecks, verdicts
from onnxq.measure.expected import ExpectedOutputs
from onnxq.measure.metrics import AllClose, OutputFidelity, TopKAccuracy, squeeze_trailing_ones
from onnxq.model import load_model
from onnxq.runtime.auto_options import choose_cuda_options
from onnxq.runtime.eps import EPS
from onnxq.runtime.ort_log import SortedLog, captured_native_output
from onnxq.runtime.session import SessionSpec, check_numpy_io, create_session, normalize_ep


class NonFiniteOutputError(OnnxqError):
    """A model produced NaN or Inf on valid, finite inputs, so no metric of it would mean anything."""


def evaluate(
    model_path: str | os.PathLike,
    data: Any,
    *,
    labels_key: str | None = None,
    reference: str | os.PathLike | None = None,
    expected: str | os.PathLike | None = None,
    ep: str = "cpu",
    batch_size: int | None = None,
    allow_fallback: bool = False,
    ep_options: Mapping[str, Any] | None = None,
    checks: EvalChecks | None = None,
) -> dict[str, Any]:
    """Run ``model_path`` on ``data`` (any source :func:`onnxq.data.open_dataset` takes) on ``ep``.

    Returns ``{"model", "model_path", "ep", "samples", "accuracy": {"top1", "top5", "labels_key"},
    "fidelity": None | {"reference", "outputs": [per-output metrics]}}``. Fidelity is against ``reference``
    (run on the same EP and batches), or the stored outputs ``expected`` (an .npz keyed by output name, or a
    test-data folder's ``output_*.pb``), or, with neither, the outputs a test-data folder given as ``data``
    stores. Accuracy values are None when the data has no labels (top5 also when there are fewer
    than 5 classes). ``warnings`` lists what the placement check found (with ``allow_fallback``, the real
    split of nodes over EPs). ``ep_options`` are SessionSpec fields of the EP's own options (``cuda_nhwc``...);
    those left open are chosen as bench chooses them, except a CUDA graph, which evaluation cannot use (a new
    batch each run; the graph would replay the captured inputs). With ``checks`` (:mod:`onnxq.measure.checks`)
    the result also holds ``checks``: ``{"passed", "results"}``. Raises an OnnxqError subclass for bad data,
    a reference whose inputs or outputs do not match, checks without a reference, an unavailable EP or one
    that did not receive the nodes (unless ``allow_fallback``), or NaN/Inf in the outputs.
    """
    ep = normalize_ep(ep)
    checks = checks or EvalChecks()
    base = _session_spec(ep, allow_fallback, ep_options)  # bad options fail before anything is loaded
    model = load_model(model_path)
    check_numpy_io(model, model_path)
    dataset = open_dataset(data, model, labels_key=labels_key)
    bs = dataset.check_batch_size(batch_size)
    spec, reasons = choose_cuda_options(base, model, io_binding=False)
    runner = create_session(model_path, spec)
    warnings = list(runner.warnings)
    ref = _Reference.open(reference, expected, model, model_path, base, dataset, bs, warnings, checks.any)
    metrics = _evaluate_batches(runner, ref, dataset, bs, model_path, checks.tolerances)
    warnings += metrics.log_warnings
    result = {
        "model": Path(model_path).stem,
        "model_path": str(model_path),
        "ep": ep,
        "samples": len(dataset),
        "accuracy": metrics.accuracy_result(_labels_key_used(data, dataset, labels_key)),
        "fidelity": None if metrics.fidelity is None else {"reference": ref.label, "outputs": metrics.outputs()},
        "ep_nodes": dict(runner.ep_nodes),
        "ep_options": spec.ep_options(),
        "ep_option_reasons": reasons,
        "warnings": warnings,
    }
    if checks.any:
        result["checks"] = verdicts(checks, result["fidelity"]["outputs"], metrics.allclose_results())
    return result


@dataclass
class _Metrics:
    """The running metrics of one evaluation."""

    accuracy: TopKAccuracy | None
    fidelity: dict[str, OutputFidelity] | None
    allclose: dict[str, AllClose] | None
    log_warnings: list[str]

    def accuracy_result(self, labels_key: str | None) -> dict[str, Any]:
        acc = self.accuracy
        return {
            "top1": acc.result(1) if acc else None,
            "top5": acc.result(5) if acc else None,
            "labels_key": labels_key,
        }

    def outputs(self) -> list[dict[str, Any]]:
        """Per-output results, for the outputs that had a reference (stored outputs may cover only some)."""
        return [f.result() for f in (self.fidelity or {}).values() if f.class_scores is not None]

    def allclose_results(self) -> list[dict[str, Any]]:
        compared = {f.name for f in (self.fidelity or {}).values() if f.class_scores is not None}
        return [a.result() for a in (self.allclose or {}).values() if a.name in compared]


def _evaluate_batches(
    runner: Any, ref: _Reference | None, dataset: Dataset, bs: int, where: Any, tolerances: tuple[float, float] | None
) -> _Metrics:
    """Run every batch through the model (and the reference); the running metrics, and the ORT/cuDNN log
    warnings of a GPU EP (cuDNN plans each new input shape on its first run)."""
    out_names = [o.name for o in runner.session.get_outputs()]
    accuracy = TopKAccuracy((1, 5)) if dataset.labels is not None else None
    fidelity = {name: OutputFidelity(name) for name in out_names} if ref is not None else None
    close = {n: AllClose(n, *tolerances) for n in out_names} if ref is not None and tolerances else None
    with captured_native_output() if EPS[runner.spec.ep].gpu else nullcontext(SortedLog()) as native:
        for start, n, feeds in padded_batches(dataset, bs):
            fed = dataset.samples_in(feeds)
            outs = _run(runner.session, feeds, n, where, start, fed)
            if accuracy is not None:
                _add_accuracy(accuracy, outs[0], dataset.labels[start : start + n], out_names[0], where, start)
            if fidelity is not None:
                refs = ref.outputs(feeds, n, start, fed)
                for name, out in zip(out_names, outs, strict=True):
                    if out is not None and refs.get(name) is not None:
                        _check_same_shape(out, refs[name], name, start)
                        fidelity[name].update(out, refs[name], n)
                        if close is not None:
                            close[name].update(out, refs[name], start, n)
    return _Metrics(accuracy, fidelity, close, native.warnings)


def _session_spec(ep: str, allow_fallback: bool, ep_options: Mapping[str, Any] | None) -> SessionSpec:
    """The spec of the evaluated sessions, before the open CUDA options are chosen for each model."""
    options = dict(ep_options or {})
    if options.get("cuda_graph"):
        raise ConfigError("evaluation cannot use a CUDA graph: it feeds a new batch each run, and a captured graph "
                          "replays the buffers it was captured with",
                          hint="drop cuda_graph; measure CUDA graphs with onnxq bench --io-binding --cuda-graph, "
                          "which reads back the outputs of the runs it times")  # fmt: skip
    return SessionSpec(ep=ep, allow_fallback=allow_fallback, **options)


class _Reference:
    """What fidelity is measured against: a reference model run on the same feeds, stored outputs given with
    ``expected``, or those a test-data folder holds beside its inputs."""

    def __init__(
        self,
        label: str,
        session: Any = None,
        stored: Iterator[dict[str, np.ndarray]] | None = None,
        expected: ExpectedOutputs | None = None,
    ):
        self.label, self.session, self.stored, self.expected = label, session, stored, expected

    @classmethod
    def open(cls, reference, expected, model, model_path, spec, dataset, bs, warnings, needed) -> _Reference | None:
        """The reference, None when there is none; ConfigError when there is none and checks (``needed``) need one."""
        ref = cls._open(reference, expected, model, model_path, spec, dataset, bs, warnings)
        if needed and ref is None:
            raise ConfigError(
                "the checks (--atol/--rtol/--min-sqnr/--min-agreement) need a reference to compare with",
                hint="pass --reference FLOAT_MODEL, or --expected OUTPUTS (.npz or a test-data folder)",
            )
        return ref

    @classmethod
    def _open(cls, reference, expected, model, model_path, spec, dataset, bs, warnings) -> _Reference | None:
        if reference is not None and expected is not None:
            raise ConfigError(
                "--reference and --expected were both given: fidelity has one reference",
                hint="compare with the float model (--reference) or with stored outputs (--expected)",
            )
        if reference is not None:
            ref_model = load_model(reference)
            _check_reference_io(model, ref_model, model_path, reference)
            ref_runner = create_session(reference, choose_cuda_options(spec, ref_model, io_binding=False)[0])
            warnings += [f"reference: {w}" for w in ref_runner.warnings]
            return cls(str(reference), session=ref_runner.session)
        if expected is not None:
            stored = ExpectedOutputs(expected, model, len(dataset))
            return cls(stored.label, expected=stored)
        if isinstance(dataset, FeedsDataset) and dataset.references is not None:
            return cls(f"{dataset.source} (stored output_*.pb)", stored=dataset.reference_batches(bs))
        return None

    def outputs(self, feeds: dict[str, np.ndarray], n: int, start: int, fed: int) -> dict[str, np.ndarray]:
        if self.session is not None:
            names = [o.name for o in self.session.get_outputs()]
            return dict(zip(names, _run(self.session, feeds, n, self.label, start, fed), strict=True))
        if self.expected is not None:
            return self.expected.batch(start, n)
        return {k: np.asarray(v) for k, v in next(self.stored).items()}  # tensors only (see read_test_data_folder)


def padded_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """``(first sample index, real samples, feeds)`` per batch, covering every sample exactly once.

    Where the graph fixes the batch size, a short last batch of stacked data is padded to ``batch_size`` by
    repeating its last sample; callers keep only the first ``real samples`` rows of each output.
    """
    start = 0
    for feeds in dataset.batches(batch_size):
        n = dataset.samples_in(feeds)
        yield start, n, feeds
        start += n
    fixed = dataset.fixed_batch_size()
    if fixed and start < len(dataset) and not isinstance(dataset, FeedsDataset):  # batches() left the short tail
        tail = dataset._slice(start, len(dataset))
        n = len(dataset) - start
        _check_padding(tail, batch_size - n, batch_size)
        yield start, n, {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, axis=0)]) for k, v in tail.items()}


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


def _run(session: Any, feeds: dict[str, np.ndarray], n: int, where: Any, start: int, fed: int) -> list[Any]:
    """Run one batch of ``fed`` rows; keep the first ``n`` (dropping padding); refuse NaN or Inf in the outputs.
    An output that is not a tensor (a sequence, a map, an empty optional) comes back as None."""
    try:
        outs = session.run(None, feeds, _quiet_run_options())
    except Exception as exc:  # ORT raises bare RuntimeErrors (InvalidArgument, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{where}: running samples {start}..{start + n - 1} failed: {first}",
            hint="check that the data matches the model's inputs (`onnxq inspect MODEL`), or try --batch 1",
        ) from exc
    names = [o.name for o in session.get_outputs()]
    kept = []
    for name, out in zip(names, outs, strict=True):
        if not isinstance(out, np.ndarray):  # a sequence (list), map (dict) or empty optional (None): no metric
            kept.append(None)  # compares it, and it has no rows of padding to drop
            continue
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


def _add_accuracy(accuracy: TopKAccuracy, out: np.ndarray, labels: np.ndarray, name: str, where: Any,
                  start: int) -> None:  # fmt: skip
    scores = class_scores(out, len(labels), name, where)
    _check_labels(labels, scores.shape[1], start)
    accuracy.update(scores, labels)


def class_scores(out: np.ndarray, n: int, name: str, where: Any) -> np.ndarray:
    """The output as [n, classes], squeezing trailing axes of size 1; ConfigError if it is not scores."""
    if out is None:
        raise ConfigError(
            f"{where}: accuracy needs class scores [N, classes] in the first output, but {name!r} is not a tensor",
            hint="evaluate against a reference only (drop the labels from the data)",
        )
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
