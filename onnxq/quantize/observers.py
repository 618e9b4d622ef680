"""Streaming observers: each turns a tensor's values, seen one batch at a time, into a range.

An observer's ``update(batch)`` takes one batch and ``finalize()`` returns ``(rmin, rmax)``. Its memory
is bounded by its histogram; values are never kept. The histogram observers (percentile, entropy, MSE)
bin ``|x|`` over ``[0, R)`` with ``R`` a power of two just above the largest ``|x|`` seen. When a batch
raises the maximum, ``R`` doubles (one or more times) and adjacent bins merge. Bin edges at ``R`` and
``2R`` align exactly, and bin indices are computed exactly in float64, so the final histogram, and hence
the range, depends only on the data and not on how it was split into batches.

The histogram observers choose a clip threshold ``T`` on ``|x|`` and return
``(max(min_seen, -T), min(max_seen, T))``, so one-sided tensors (ReLU outputs) keep ``rmin = 0``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from onnxq.errors import ConfigError, DataError

_CHUNK = 1 << 20  # values binned at a time


def _as_float32(batch: np.ndarray) -> np.ndarray:
    arr = np.asarray(batch)
    if arr.dtype.kind != "f":
        raise DataError(
            f"observers need floating-point values, got {arr.dtype}",
            hint="only float tensors have a calibration range; integer tensors are not quantized",
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        kind = "NaN" if np.isnan(arr).any() else "Inf"
        raise DataError(f"the values hold {kind}", hint="a range cannot be calibrated on non-finite values")
    return arr


class MinMaxObserver:
    """Running min and max; with ``moving_average``, ``m += c * (batch_m - m)`` per batch (as ORT)."""

    def __init__(self, moving_average: bool = False, averaging_constant: float = 0.01) -> None:
        if not 0.0 <= averaging_constant <= 1.0:
            raise ConfigError(f"averaging_constant must lie in [0, 1], got {averaging_constant}", hint="e.g. 0.01")
        self.moving_average = moving_average
        self.averaging_constant = averaging_constant
        self.min: float | None = None
        self.max: float | None = None

    def update(self, batch: np.ndarray) -> None:
        arr = _as_float32(batch)
        if arr.size == 0:
            return
        bmin, bmax = float(arr.min()), float(arr.max())
        if self.min is None or self.max is None:
            self.min, self.max = bmin, bmax
        elif self.moving_average:
            self.min += self.averaging_constant * (bmin - self.min)
            self.max += self.averaging_constant * (bmax - self.max)
        else:
            self.min, self.max = min(self.min, bmin), max(self.max, bmax)

    def finalize(self) -> tuple[float, float]:
        if self.min is None or self.max is None:
            raise DataError("the observer saw no values", hint="give calibration data with at least one sample")
        return self.min, self.max


class AbsHistogram:
    """Counts of ``|x|`` in ``num_bins`` equal bins over ``[0, 2**exponent)``; also min, max, exact zeros."""

    def __init__(self, num_bins: int) -> None:
        if not 8 <= num_bins <= 2**24:
            raise ConfigError(f"num_bins must lie in [8, 2**24], got {num_bins}", hint="e.g. 2048 (the default)")
        self.counts = np.zeros(num_bins, dtype=np.int64)
        self.exponent: int | None = None  # None until a non-zero value is seen
        self.min = math.inf
        self.max = -math.inf
        self.zeros = 0

    @property
    def num_bins(self) -> int:
        return len(self.counts)

    @property
    def bin_width(self) -> float:
        return 0.0 if self.exponent is None else math.ldexp(1.0, self.exponent) / self.num_bins

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, batch: np.ndarray) -> None:
        arr = _as_float32(batch).ravel()
        if arr.size == 0:
            return
        lo, hi = float(arr.min()), float(arr.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.zeros += arr.size - int(np.count_nonzero(arr))
        top = max(-lo, hi)  # max |x|
        if top > 0:
            exponent = math.frexp(top)[1]  # top < 2**exponent <= 2 * top
            if self.exponent is None:
                self.exponent = exponent
            elif exponent > self.exponent:
                self._grow(exponent - self.exponent)
                self.exponent = exponent
        if self.exponent is None:
            self.counts[0] += arr.size
            return
        factor = math.ldexp(self.num_bins, -self.exponent)
        # The bin of |x| is floor(|x| * factor), computed exactly. With a power-of-two bin count the factor is
        # a power of two, so the float32 product is exact (a product below 1 may lose bits as a subnormal,
        # but its bin is 0 either way); otherwise |x| (24 significant bits) times num_bins (< 2**25) is exact
        # in float64. The product is >= 0, so truncating to an integer is the floor. Float32 is ~4x faster.
        power_of_two = self.num_bins & (self.num_bins - 1) == 0
        for start in range(0, arr.size, _CHUNK):  # chunks bound the temporaries
            scaled = np.abs(arr[start : start + _CHUNK])
            if power_of_two:
                scaled *= np.float32(factor)
            else:
                scaled = scaled.astype(np.float64) * factor
            idx = scaled.astype(np.intp)
            np.minimum(idx, self.num_bins - 1, out=idx)
            self.counts += np.bincount(idx, minlength=self.num_bins)

    def _grow(self, doublings: int) -> None:
        """Scale the range by 2**doublings: each new bin is the sum of 2**doublings old ones."""
        group = 2**doublings if doublings < 63 else None
        n = self.num_bins
        if group is None or group >= n:
            merged = np.array([self.counts.sum()])
        else:
            padded = np.zeros(-(-n // group) * group, dtype=np.int64)
            padded[:n] = self.counts
            merged = padded.reshape(-1, group).sum(axis=1)
        self.counts = np.zeros(n, dtype=np.int64)
        self.counts[: len(merged)] = merged

    def clip(self, threshold: float) -> tuple[float, float]:
        """The range ``[min, max]`` clipped to ``[-threshold, threshold]``."""
        if self.total == 0:
            raise DataError("the observer saw no values", hint="give calibration data with at least one sample")
        return float(max(self.min, -threshold)), float(min(self.max, threshold))


class PercentileObserver:
    """Clip ``|x|`` at its ``percentile``-th percentile, interpolated linearly inside the histogram bin."""

    def __init__(self, percentile: float = 99.99, num_bins: int = 2048) -> None:
        if not 0.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must lie in (0, 100], got {percentile}", hint="e.g. 99.99 (the default)")
        self.percentile = percentile
        self.hist = AbsHistogram(num_bins)

    def update(self, batch: np.ndarray) -> None:
        self.hist.add(batch)

    def finalize(self) -> tuple[float, float]:
        counts = self.hist.counts
        target = self.percentile / 100.0 * self.hist.total
        cdf = np.cumsum(counts)
        b = min(int(np.searchsorted(cdf, target, side="left")), len(counts) - 1)
        below = cdf[b] - counts[b]
        frac = (target - below) / counts[b] if counts[b] else 1.0
        return self.hist.clip((b + frac) * self.hist.bin_width)


def kl_divergence_curve(counts: np.ndarray, num_quantized_bins: int = 128, eps: float = 1e-4) -> np.ndarray:
    """KL(P || Q) for every threshold of ``i`` bins, ``i`` in [num_quantized_bins, len(counts)].

    TensorRT's procedure: P is bins [0, i) with the outliers (bins >= i) added to bin i-1; Q quantizes
    the raw bins [0, i) to ``num_quantized_bins`` levels (bin b goes to level floor(b * levels / i)) and
    spreads each level's mass evenly over the bins of the level where P is non-zero. Both are
    normalized. Where P > 0 but Q = 0 (only bin i-1, when outliers fall beyond an empty last level), Q
    gets ``eps`` and its other bins are scaled by (1 - eps). Thresholds whose Q is empty get +inf.
    Vectorized over all thresholds with prefix sums: O(len(counts) * num_quantized_bins).
    """
    h = np.asarray(counts, dtype=np.float64)
    n, levels = len(h), num_quantized_bins
    total = h.sum()
    cum = np.concatenate([[0.0], np.cumsum(h)])
    cum_nz = np.concatenate([[0], np.cumsum(h > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        cum_hlogh = np.concatenate([[0.0], np.cumsum(np.where(h > 0, h * np.log(h), 0.0))])
    i = np.arange(levels, n + 1)
    outliers = total - cum[i]
    p_last = h[i - 1] + outliers
    # level j of threshold i holds bins [ceil(j*i/levels), ceil((j+1)*i/levels))
    bounds = -((-np.arange(levels + 1)[None, :] * i[:, None]) // levels)
    level_sum = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]
    level_nz = (cum_nz[bounds[:, 1:]] - cum_nz[bounds[:, :-1]]).astype(np.float64)
    level_nz[:, -1] += (h[i - 1] == 0) & (outliers > 0)  # bin i-1 is in the last level, non-zero in P
    p_mass = level_sum.copy()
    p_mass[:, -1] += outliers
    hole = (level_sum[:, -1] == 0) & (outliers > 0)
    q_total = cum[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        # sum over P's bins of p log p, with p = P / total
        p_log_p = (cum_hlogh[i - 1] - np.log(total) * cum[i - 1]) / total
        p_log_p += np.where(p_last > 0, p_last / total * np.log(p_last / total), 0.0)
        log_q = np.log(level_sum / (level_nz * q_total[:, None])) + np.log1p(-eps * hole)[:, None]
        cross = np.where(level_sum > 0, p_mass / total * log_q, 0.0).sum(axis=1)
        cross += np.where(hole, outliers / total * math.log(eps), 0.0)
    return np.where(q_total > 0, p_log_p - cross, np.inf)


class EntropyObserver:
    """TensorRT-style entropy calibration: the threshold on ``|x|`` that minimizes KL divergence.

    Exact zeros are left out of the histogram. They are represented exactly by every range (the zero
    point), so they carry no quantization error, but after a ReLU they are often half of all values: in
    bin 0 they dominate the KL divergence, which then favours the smallest threshold whose first level is
    bin 0 alone, clipping a ReLU6 output at 1.0 instead of about 4 (seen on the sample MobileNetV2,
    which this destroyed: 11% top-1 agreement).
    """

    def __init__(self, num_bins: int = 2048, num_quantized_bins: int = 128, min_values_per_bin: float = 16) -> None:
        self.min_values_per_bin = min_values_per_bin
        if not 2 <= num_quantized_bins <= num_bins:
            raise ConfigError(f"num_quantized_bins must lie in [2, num_bins={num_bins}], got {num_quantized_bins}",
                              hint="e.g. 128 (the default)")  # fmt: skip
        self.num_quantized_bins = num_quantized_bins
        self.hist = AbsHistogram(num_bins)

    def update(self, batch: np.ndarray) -> None:
        self.hist.add(batch)

    def finalize(self) -> tuple[float, float]:
        if self.hist.exponent is None:  # all zeros (or nothing): no threshold to search
            return self.hist.clip(0.0)
        if self.hist.min > 0 or self.hist.max < 0:
            # all values on one side of zero, none at it: the range must reach 0 anyway, and a threshold on
            # |x| below the data's smallest magnitude would collapse it (seen: [-1.64, -0.65] -> [-0.65, -0.65])
            return float(self.hist.min), float(self.hist.max)
        counts = self.hist.counts.copy()
        counts[0] -= self.hist.zeros  # exact zeros sit in bin 0; see the class docstring
        if counts.sum() < self.min_values_per_bin * self.hist.num_bins:
            # too few values for a 2048-bin distribution (e.g. squeeze-excite vectors, 1x1 spatially): the
            # KL search then fits noise and clips real values (ppocr: one such tensor cost 15 dB)
            return float(self.hist.min), float(self.hist.max)
        if not counts.any():
            return self.hist.clip(0.0)
        curve = kl_divergence_curve(counts, self.num_quantized_bins)
        best_bins = self.num_quantized_bins + int(np.argmin(curve))
        return self.hist.clip(best_bins * self.hist.bin_width)


class MSEObserver:
    """The clip threshold that minimizes the expected squared quantization error, from the histogram.

    For a threshold T (a bin edge) the error is the clipping error ``sum (|x| - T)**2`` over values
    beyond T (at bin centres) plus the rounding error ``step**2 / 12`` for every non-zero value inside
    (exact zeros are representable and cost nothing). The step is the one :func:`compute_qparams` will
    use for ``num_levels`` levels on the clipped range: ``(hi - lo) / (num_levels - 1)``, or
    ``absmax / ((num_levels - 1) // 2)`` when ``symmetric``.
    """

    def __init__(self, num_bins: int = 2048, num_levels: int = 256, symmetric: bool = False) -> None:
        if num_levels < 3:
            raise ConfigError(f"num_levels must be at least 3, got {num_levels}", hint="e.g. 256 for 8 bits")
        self.num_levels = num_levels
        self.symmetric = symmetric
        self.hist = AbsHistogram(num_bins)

    def update(self, batch: np.ndarray) -> None:
        self.hist.add(batch)

    def finalize(self) -> tuple[float, float]:
        if self.hist.exponent is None:
            return self.hist.clip(0.0)
        errors, thresholds = self.errors()
        return self.hist.clip(float(thresholds[int(np.argmin(errors))]))

    def errors(self) -> tuple[np.ndarray, np.ndarray]:
        """(expected squared error summed over all values, threshold) for every bin edge threshold."""
        hist = self.hist
        h = hist.counts.astype(np.float64)
        w = hist.bin_width
        centres = (np.arange(len(h)) + 0.5) * w
        thresholds = np.arange(1, len(h) + 1) * w

        def suffix(v: np.ndarray) -> np.ndarray:  # sum over bins k.. for threshold index k-1
            return np.concatenate([np.cumsum(v[::-1])[::-1][1:], [0.0]])

        clip_err = suffix(h * centres**2) - 2 * thresholds * suffix(h * centres) + thresholds**2 * suffix(h)
        inside = np.cumsum(h) - hist.zeros
        lo = np.minimum(np.maximum(hist.min, -thresholds), 0.0)
        hi = np.maximum(np.minimum(hist.max, thresholds), 0.0)
        if self.symmetric:
            step = np.maximum(-lo, hi) / ((self.num_levels - 1) // 2)
        else:
            step = (hi - lo) / (self.num_levels - 1)
        return np.maximum(clip_err, 0.0) + inside * step**2 / 12.0, thresholds


OBSERVERS: dict[str, type] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "entropy": EntropyObserver,
    "mse": MSEObserver,
}


def make_observer(method: str, **opts: Any):
    """A new observer for ``method`` (minmax, percentile, entropy, mse); ConfigError on bad options."""
    if method not in OBSERVERS:
        raise ConfigError(f"unknown calibration method {method!r}", hint=f"use one of: {', '.join(OBSERVERS)}")
    cls = OBSERVERS[method]
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise ConfigError(
            f"calibration method {method!r} has no option(s) {unknown}",
            hint=f"its options are: {', '.join(known)}",
        )
    try:
        return cls(**opts)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise ConfigError(
            f"bad option value for calibration method {method!r}: {exc}",
            hint=f"its options are: {', '.join(known)}, with numbers as values",
        ) from exc
