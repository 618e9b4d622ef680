"""Timing loops and latency statistics for :mod:`onnxq.measure.bench`: warm-up, the interleaved measurement of
several models (in a balanced order), percentiles, and the warnings and speedups derived from them.

Nothing here knows about ONNX or onnxruntime: a model is a callable, a clock returns nanoseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxq.errors import ConfigError

CV_WARN_THRESHOLD = 0.15  # std/mean of latency above this: the run was too noisy to trust small differences
MIN_RUNS_FOR_TAILS = 20  # fewer timed runs than this: p95/p99 are just the largest samples
MIN_DURATION_ROUNDS = 2  # --duration still runs this many rounds, so that std is defined


def warm_up(call: Callable[[], Any], runs: int, seconds: float | None) -> int:
    """Run ``call`` ``runs`` times, or for ``seconds`` (at least once) when given; return the count."""
    if seconds is None:
        for _ in range(runs):
            call()
        return runs
    done, end = 0, time.perf_counter() + seconds
    while done == 0 or time.perf_counter() < end:
        call()
        done += 1
    return done


@dataclass
class Timings:
    """Per-model timings of an interleaved loop: each run's latency, and its slot of the loop's wall time."""

    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0  # from the start of each of its runs to the start of the next run (of any model)


def round_orders(n: int) -> list[list[int]]:
    """Orders for successive rounds of ``n`` models: a Williams design (balanced Latin square).

    Each model is in each position once per n rounds, and within the rounds each model directly follows
    each other model equally often (once for even n; for odd n the n rows and their n reverses, twice).
    """
    if n <= 1:
        return [list(range(n))]
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:  # 0, 1, n-1, 2, n-2, ...
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + r) % n for x in first] for r in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


def measure_interleaved(
    calls: Sequence[Callable[[], Any]],
    *,
    rounds: int | None = None,
    duration_s: float | None = None,
    on_run: Callable[[int, int], None] | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[Timings]:
    """Round-robin: each round runs every call once; ``rounds`` rounds, or rounds until ``duration_s`` has
    passed (at least MIN_DURATION_ROUNDS). ``clock`` returns nanoseconds.

    The order changes each round, cycling through :func:`round_orders` (a Williams design), so over each
    cycle every call takes every slot of the round equally often and directly follows every other call
    equally often: a cost that depends on the slot or the predecessor (a cache or allocator warmed by the
    previous model, a GPU clock ramping after the host-side gap between rounds) falls on all calls alike.
    """
    if (rounds is None) == (duration_s is None):
        raise ConfigError("give exactly one of runs and duration", hint="pass --runs N or --duration SECONDS")
    out = [Timings() for _ in calls]
    orders = round_orders(len(calls))
    begin = clock()
    limit = None if duration_s is None else int(duration_s * 1e9)
    r, prev = 0, None  # prev: (index, start) of the previous run, whose wall slot ends when the next starts
    while (r < rounds) if rounds is not None else (r < MIN_DURATION_ROUNDS or clock() - begin < limit):
        for i in orders[r % len(orders)]:
            call = calls[i]
            if on_run is not None:
                on_run(i, r)
            t0 = clock()
            call()
            t1 = clock()
            out[i].latencies_s.append((t1 - t0) / 1e9)
            if prev is not None:
                out[prev[0]].wall_s += (t0 - prev[1]) / 1e9
            prev = (i, t0)
        r += 1
    if prev is not None:
        out[prev[0]].wall_s += (clock() - prev[1]) / 1e9
    return out


def latency_stats_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """min, mean, std (sample, ddof=1; 0 for one run), p50/p90/p95/p99 (linear interpolation), max; in ms."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no latencies")
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {
        "min": float(ms.min()),
        "mean": float(ms.mean()),
        "std": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(ms.max()),
    }


def measurement_warnings(cv: float, runs: int, cv_threshold: float = CV_WARN_THRESHOLD) -> list[str]:
    """Warnings about how far the numbers can be trusted: a noisy run (cv above the threshold), few runs."""
    out = []
    if cv > cv_threshold:
        out.append(
            f"unstable run: latency std/mean = {cv:.2f} > {cv_threshold} (other load on the machine?); "
            "run longer or on an idle machine"
        )
    if runs < MIN_RUNS_FOR_TAILS:
        out.append(f"only {runs} timed runs: p95/p99 are little more than the slowest runs")
    return out


def add_speedups(group: list[dict[str, Any]]) -> None:
    """Set ``speedup_vs_first`` = p50 of the group's first entry / own p50 (None for a lone model)."""
    if len(group) < 2:
        return
    base = group[0]["latency_ms"]["p50"]
    for e in group:
        e["speedup_vs_first"] = base / e["latency_ms"]["p50"]
