"""Streaming evaluation metrics: top-k accuracy against labels, and fidelity of outputs against a reference.

Both accumulators take one batch at a time and keep running sums in float64, never the outputs, so memory
stays bounded however large the data set is. The conventions (ties, zeros, infinities) are spelled out on
each class, because they decide what the numbers in a report mean.
"""

from __future__ import annotations

import math

import numpy as np


def _squeezed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def squeeze_trailing_ones(a: np.ndarray) -> np.ndarray:
    """Drop trailing axes of size 1, keeping rank >= 2: [N, C, 1, 1] -> [N, C], as conv classifiers end."""
    return a.reshape(_squeezed_shape(a.shape))


def looks_like_class_scores(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """True for float outputs of rank >= 2 with at least 2 entries on the last axis (scores per class),
    once trailing axes of size 1 are squeezed.

    This is a heuristic: a regression head of shape [N, 4] passes it too; argmax agreement on such an output
    is then reported but means little.
    """
    shape = _squeezed_shape(tuple(shape))
    return np.issubdtype(dtype, np.floating) and len(shape) >= 2 and shape[-1] >= 2


class TopKAccuracy:
    """Top-k accuracy of class scores [n, classes] against integer labels [n], for several k at once.

    Ties are broken as a stable descending sort would (and as ``np.argmax`` does for k = 1): among equal
    scores, the lower class index ranks first. So a sample is top-k correct when
    ``#(scores > s_label) + #(scores == s_label and index < label) < k``. Accuracy for a k larger than the
    number of classes is None (undefined), not a trivial 1.0.
    """

    def __init__(self, ks: tuple[int, ...] = (1, 5)) -> None:
        self.ks = ks
        self.correct = dict.fromkeys(ks, 0)
        self.count = 0
        self.num_classes: int | None = None

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch; ``labels`` must already be checked to lie in [0, classes)."""
        n, classes = scores.shape
        self.num_classes = classes
        label_scores = scores[np.arange(n), labels][:, None]
        index = np.arange(classes)[None, :]
        rank = (scores > label_scores).sum(axis=1) + (
            (scores == label_scores) & (index < labels[:, None])
        ).sum(axis=1)
        for k in self.ks:
            self.correct[k] += int((rank < k).sum())
        self.count += n

    def result(self, k: int) -> float | None:
        if self.count == 0 or self.num_classes is None or k > self.num_classes:
            return None
        return self.correct[k] / self.count


class OutputFidelity:
    """How far one output of a model is from the same output of a reference model, over all batches.

    Reported (all computed in float64 over every element seen):

    - ``top1_agreement``: fraction of positions where argmax over the last axis (after squeezing trailing
      axes of size 1) agrees; None unless the output looks like class scores, see
      :func:`looks_like_class_scores`.
    - ``sqnr_db``: 10 log10(sum ref^2 / sum (ref - out)^2). None when it is not a finite number: the outputs
      are identical (error energy 0, SQNR = +inf; ``max_abs_error`` is then 0) or the reference is all zero.
    - ``cosine``: ``mean_per_sample`` (each sample flattened, cosine taken, then averaged; None when the
      output has no batch axis matching the samples) and ``overall`` (everything flattened into one vector).
      Two zero vectors count as cosine 1 (identical), one zero vector against a non-zero one as 0. Clipped
      to [-1, 1].
    - ``max_abs_error``, ``mean_abs_error``: of |out - ref|.
    - ``min_atol``: the smallest atol for which ``np.allclose(out, ref, rtol=0, atol=atol)`` holds, which is
      max |out - ref|. ``min_rtol``: the smallest rtol for which ``np.allclose(out, ref, rtol=rtol, atol=0)``
      holds, which is max |out - ref| / |ref| over elements that differ; None when some element differs
      where ref is 0, since no rtol covers that without an atol. (Polygraphy reports these as "required
      tolerances".) ``min_rtol`` is set by the element with the smallest |ref| that differs, so on logits or
      activations that cross zero it is huge (95.9 for resnet_digits quantized, at 35.5 dB SQNR): a check needs an
      atol (``onnxq eval --atol A --rtol R``), and ``max_error_vs_peak`` says how large the errors are.
    - ``max_error_vs_peak``: max |out - ref| / max |ref|, the worst error as a fraction of the reference's
      largest magnitude (None for an all-zero reference); unlike ``min_rtol``, near-zero references do not
      dominate it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.elements = 0
        self.sum_ref2 = 0.0
        self.sum_err2 = 0.0
        self.sum_abs = 0.0
        self.max_abs = 0.0
        self.max_ref = 0.0
        self.max_rel = 0.0
        self.rtol_unbounded = False
        self.dot = 0.0
        self.sum_out2 = 0.0
        self.cos_sum = 0.0
        self.cos_count = 0
        self.per_sample_ok = True
        self.agree = 0
        self.agree_count = 0
        self.class_scores: bool | None = None

    def update(self, out: np.ndarray, ref: np.ndarray, samples: int) -> None:
        """Add one batch of ``samples`` samples; ``out`` and ``ref`` must have the same shape."""
        if self.class_scores is None:
            self.class_scores = looks_like_class_scores(out.shape, out.dtype)
        o = out.astype(np.float64, copy=False)
        r = ref.astype(np.float64, copy=False)
        err = np.abs(o - r)
        self.elements += err.size
        self.sum_ref2 += float(np.square(r).sum())
        self.sum_err2 += float(np.square(err).sum())
        self.sum_abs += float(err.sum())
        if err.size:
            self.max_abs = max(self.max_abs, float(err.max()))
            self.max_ref = max(self.max_ref, float(np.abs(r).max()))
        self._update_rel(err, r)
        self.dot += float((o * r).sum())
        self.sum_out2 += float(np.square(o).sum())
        self._update_per_sample_cosine(o, r, samples)
        if self.class_scores:
            out_c, ref_c = squeeze_trailing_ones(out), squeeze_trailing_ones(ref)
            self.agree += int((out_c.argmax(axis=-1) == ref_c.argmax(axis=-1)).sum())
            self.agree_count += int(np.prod(out_c.shape[:-1]))

    def _update_rel(self, err: np.ndarray, r: np.ndarray) -> None:
        differs = err > 0
        at_zero = differs & (r == 0)
        if at_zero.any():
            self.rtol_unbounded = True
        finite = differs & ~at_zero
        if finite.any():
            self.max_rel = max(self.max_rel, float((err[finite] / np.abs(r[finite])).max()))

    def _update_per_sample_cosine(self, o: np.ndarray, r: np.ndarray, samples: int) -> None:
        if o.ndim == 0 or o.shape[0] != samples:
            self.per_sample_ok = False  # no batch axis to split samples on
            return
        per_sample = int(np.prod(o.shape[1:], dtype=np.int64))  # not -1: numpy cannot infer it for 0 samples
        o2 = o.reshape(samples, per_sample)
        r2 = r.reshape(samples, per_sample)
        cos = _cosine(
            np.einsum("ij,ij->i", o2, r2), np.einsum("ij,ij->i", o2, o2), np.einsum("ij,ij->i", r2, r2)
        )
        self.cos_sum += float(cos.sum())
        self.cos_count += samples

    def result(self) -> dict:
        """The metrics as a JSON-ready dict (plain floats or None, never NaN or inf)."""
        return {
            "name": self.name,
            "top1_agreement": self.agree / self.agree_count
            if self.class_scores and self.agree_count
            else None,
            "sqnr_db": _sqnr_db(self.sum_ref2, self.sum_err2),
            "cosine": {
                "mean_per_sample": self.cos_sum / self.cos_count
                if self.per_sample_ok and self.cos_count
                else None,
                "overall": float(
                    _cosine(np.array(self.dot), np.array(self.sum_out2), np.array(self.sum_ref2))
                ),
            },
            "max_abs_error": self.max_abs,
            "mean_abs_error": self.sum_abs / self.elements if self.elements else 0.0,
            "min_atol": self.max_abs,
            "min_rtol": None if self.rtol_unbounded else self.max_rel,
            "max_error_vs_peak": self.max_abs / self.max_ref if self.max_ref > 0 else None,
        }


class AllClose:
    """How many elements of one output fail ``np.isclose(out, ref, rtol, atol)``, i.e.
    ``|out - ref| > atol + rtol * |ref|``, over all batches, and the element furthest beyond its tolerance.

    The worst element is the one with the largest ``|out - ref| - (atol + rtol * |ref|)`` (the first such
    in the order seen), reported even when nothing fails (the closest to failing). Its ``sample`` is the
    data set's sample index when the output's axis 0 is the batch, else None, with ``position`` the index
    within the sample (or within the batch's output).
    """

    def __init__(self, name: str, atol: float, rtol: float) -> None:
        self.name, self.atol, self.rtol = name, atol, rtol
        self.elements = 0
        self.failing = 0
        self.worst: dict | None = None
        self._worst_excess = -math.inf

    def update(self, out: np.ndarray, ref: np.ndarray, start: int, samples: int) -> None:
        """Add one batch whose first sample is ``start`` and which holds ``samples`` samples."""
        o = out.astype(np.float64, copy=False)
        r = ref.astype(np.float64, copy=False)
        err = np.abs(o - r)
        allowed = self.atol + self.rtol * np.abs(r)
        self.elements += err.size
        self.failing += int((err > allowed).sum())
        if not err.size:
            return
        excess = err - allowed
        flat = int(np.argmax(excess))
        if float(excess.flat[flat]) > self._worst_excess:
            self._worst_excess = float(excess.flat[flat])
            index = [int(i) for i in np.unravel_index(flat, err.shape)]
            batched = o.ndim > 0 and o.shape[0] == samples
            self.worst = {
                "sample": start + index[0] if batched else None,
                "position": index[1:] if batched else index,
                "output": float(o.flat[flat]),
                "reference": float(r.flat[flat]),
                "abs_error": float(err.flat[flat]),
                "allowed": float(allowed.flat[flat]),
            }

    def result(self) -> dict:
        """The check's numbers as a JSON-ready dict; ``passed`` when no element fails."""
        return {
            "check": "allclose",
            "output": self.name,
            "atol": self.atol,
            "rtol": self.rtol,
            "elements": self.elements,
            "failing": self.failing,
            "failing_fraction": self.failing / self.elements if self.elements else 0.0,
            "worst": self.worst,
            "passed": self.failing == 0,
        }


def _cosine(dot: np.ndarray, n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """Cosine from dot products and squared norms; 1 for two zero vectors, 0 for one zero vector."""
    denom = np.sqrt(n1 * n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(
            denom > 0, dot / np.where(denom > 0, denom, 1.0), np.where((n1 == 0) & (n2 == 0), 1.0, 0.0)
        )
    return np.clip(cos, -1.0, 1.0)  # rounding can push |cos| a hair past 1


def _sqnr_db(signal: float, noise: float) -> float | None:
    if noise == 0 or signal == 0:
        return None
    return 10.0 * math.log10(signal / noise)
