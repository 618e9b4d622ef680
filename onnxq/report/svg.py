"""The report's plots as inline SVG, drawn by our own code so that the HTML page needs no plotting library.

Two plots: the latency distribution of each bench entry (a percentile box plot, with the raw runs as dots
when the entry carries ``samples_ms``), and top-1 accuracy against p50 latency with marker area
proportional to model size. Every string is escaped; the SVG references nothing outside itself.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from html import escape
from typing import Any

from onnxq.report.tables import entry_label, fmt_bytes, fmt_num, fmt_pct
from onnxq.runtime.eps import EPS

EP_COLORS = {ep.name: ep.color for ep in EPS.values()}
OTHER_COLOR = "#9d755d"
MAX_DOTS = 400  # raw runs drawn per entry; more only blackens the row
LOG_SPREAD = 20.0  # use a log axis when the largest value is this many times the smallest


def ep_color(ep: str) -> str:
    return EP_COLORS.get(str(ep), OTHER_COLOR)


@dataclass(frozen=True)
class Scale:
    """Maps data values in [lo, hi] to pixels in [p0, p1], linearly or logarithmically."""

    lo: float
    hi: float
    p0: float
    p1: float
    log: bool = False

    def __call__(self, v: float) -> float:
        if self.log:
            t = (math.log10(max(v, self.lo)) - math.log10(self.lo)) / (
                math.log10(self.hi) - math.log10(self.lo)
            )
        else:
            t = (v - self.lo) / (self.hi - self.lo)
        return self.p0 + min(max(t, 0.0), 1.0) * (self.p1 - self.p0)

    def ticks(self) -> list[float]:
        if self.log:
            first, last = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            steps = (1, 2, 5) if last - first <= 3 else (1,)
            vals = [m * 10.0**e for e in range(first, last + 1) for m in steps]
        else:
            step = self.step()
            start = math.ceil(self.lo / step - 1e-9) * step
            vals = [start + i * step for i in range(int((self.hi - start) / step + 1e-9) + 1)]
        eps = 1e-9 * (self.hi - self.lo)  # float steps may land a hair past an end they are meant to hit
        return [v for v in vals if self.lo - eps <= v <= self.hi + eps]

    def step(self) -> float:
        """The linear tick step: 1, 2 or 5 times a power of ten, about five ticks over the range."""
        return _nice_step((self.hi - self.lo) / 5)

    def tick_labels(self, suffix: str = "") -> list[tuple[float, str]]:
        """``(value, text)`` per tick, all with the same number of decimals on a linear scale (0.05 steps:
        '95.00', '100.00'); on a log scale each value's shortest form ('0.02', '0.1', '1', '10')."""
        if self.log:
            return [(v, f"{v:,.10g}{suffix}") for v in self.ticks()]
        decimals = max(0, -math.floor(math.log10(self.step()) + 1e-9))
        return [(v, f"{v:,.{decimals}f}{suffix}") for v in self.ticks()]


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``."""
    if raw <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def value_scale(
    values: list[float], p0: float, p1: float, *, floor: float | None = None, log_ok: bool = True
) -> Scale:
    """A padded scale over ``values``: log when allowed and they span more than LOG_SPREAD, all positive."""
    lo, hi = min(values), max(values)
    if log_ok and lo > 0 and hi / lo > LOG_SPREAD:
        return Scale(lo / 1.25, hi * 1.25, p0, p1, log=True)
    pad = (hi - lo) * 0.08 or (abs(hi) * 0.1 or 1.0)
    lo, hi = lo - pad, hi + pad
    if floor is not None:
        lo = max(lo, floor)
    return Scale(lo, hi, p0, p1)


def zero_based_scale(values: list[float], p0: float, p1: float) -> Scale:
    """Non-negative values (latencies) on an axis from 0, so bar lengths and distances compare as ratios; a log
    axis (which the axis label says) when they span more than LOG_SPREAD. The top is rounded up to a tick."""
    lo, hi = min(values), max(values)
    if lo > 0 and hi / lo > LOG_SPREAD:
        return Scale(lo / 1.25, hi * 1.25, p0, p1, log=True)
    top = hi * 1.05 or 1.0
    step = _nice_step(top / 5)
    return Scale(0.0, math.ceil(top / step - 1e-9) * step, p0, p1)


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>' + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, s: str, *, anchor: str = "start", size: int = 12, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"{c}>{escape(s)}</text>'


def _x_axis(scale: Scale, y_top: float, y_axis: float, label: str) -> list[str]:
    out = [
        f'<line x1="{scale.p0:.1f}" y1="{y_axis:.1f}" x2="{scale.p1:.1f}" y2="{y_axis:.1f}" stroke="#333"/>'
    ]
    for v, text in scale.tick_labels():
        x = scale(v)
        out.append(f'<line x1="{x:.1f}" y1="{y_top:.1f}" x2="{x:.1f}" y2="{y_axis:.1f}" stroke="#e3e3e3"/>')
        out.append(_text(x, y_axis + 16, text, anchor="middle", size=11))
    out.append(
        _text(
            (scale.p0 + scale.p1) / 2,
            y_axis + 36,
            label + (" (log scale)" if scale.log else ""),
            anchor="middle",
        )
    )
    return out


def _empty(width: int, title: str, message: str) -> str:
    return _svg(width, 60, title, [_text(width / 2, 35, message, anchor="middle", size=14)])


def latency_plot(bench: list[dict[str, Any]], width: int = 960) -> str:
    """One row per bench entry: line min..p99, box p50..p90, tick at p50, open circle at max, and a grey dot per
    timed run where the entry carries ``samples_ms``; the legend names the dots only when some are drawn."""
    title = "Latency distribution per model and EP"
    if not bench:
        return _empty(width, title, "no benchmark entries")
    left, right, top, row_h = 290, 30, 16, 30
    height = top + row_h * len(bench) + 70
    values = [e["latency_ms"][k] for e in bench for k in ("min", "max")]
    values += [v for e in bench if e.get("samples_ms") for v in (min(e["samples_ms"]), max(e["samples_ms"]))]
    scale = zero_based_scale(values, left, width - right)
    y_axis = top + row_h * len(bench) + 4
    body = _x_axis(scale, top, y_axis, "latency of one batch (ms)")
    for i, e in enumerate(bench):
        body += _latency_row(e, scale, top + i * row_h + row_h / 2, left)
    legend = "box: p50 to p90 · line: min to p99 · dark tick: p50 · open circle: max"
    with_runs = sum(bool(e.get("samples_ms")) for e in bench)
    if with_runs == len(bench):
        legend += " · grey dots: individual runs"
    elif with_runs:
        legend += f" · grey dots: individual runs ({with_runs} of {len(bench)} entries recorded them)"
    body.append(_text(left, height - 8, legend, size=11, cls="legend"))
    return _svg(width, height, title, body)


def _latency_row(e: dict[str, Any], scale: Scale, y: float, left: float) -> list[str]:
    lat, color = e["latency_ms"], ep_color(e.get("ep", ""))
    label = entry_label(e)
    tip = f"{label}: " + ", ".join(f"{k} {fmt_num(lat[k])} ms" for k in ("min", "p50", "p90", "p99", "max"))
    out = [f"<g><title>{escape(tip)}</title>", _text(left - 10, y + 4, label[:44], anchor="end")]
    out.append(
        f'<line x1="{scale(lat["min"]):.1f}" y1="{y:.1f}" x2="{scale(lat["p99"]):.1f}" y2="{y:.1f}" '
        f'stroke="#555" stroke-width="1.5"/>'
    )
    x50, x90 = scale(lat["p50"]), scale(lat["p90"])
    out.append(
        f'<rect x="{x50:.1f}" y="{y - 7:.1f}" width="{max(x90 - x50, 1.5):.1f}" height="14" '
        f'fill="{color}" fill-opacity="0.75" stroke="{color}"/>'
    )
    out.append(
        f'<line x1="{x50:.1f}" y1="{y - 10:.1f}" x2="{x50:.1f}" y2="{y + 10:.1f}" stroke="#111" '
        f'stroke-width="2.5"/>'
    )
    out.append(f'<circle cx="{scale(lat["max"]):.1f}" cy="{y:.1f}" r="3.5" fill="none" stroke="#111"/>')
    for j, v in enumerate(_thin(e.get("samples_ms") or [], MAX_DOTS)):
        jitter = ((j * 0.618034) % 1.0 - 0.5) * 18  # deterministic spread, so reruns draw the same page
        out.append(
            f'<circle cx="{scale(v):.1f}" cy="{y + jitter:.1f}" r="1.4" class="run" fill="#000" fill-opacity="0.22"/>'
        )
    out.append("</g>")
    return out


def _thin(values: list[float], limit: int) -> list[float]:
    """At most ``limit`` values at evenly spaced ranks, always keeping the smallest and the largest."""
    if len(values) <= limit:
        return list(values)
    ordered = sorted(values)
    return [ordered[round(k * (len(ordered) - 1) / (limit - 1))] for k in range(limit)]


@dataclass(frozen=True)
class AccuracyPoint:
    label: str
    ep: str
    p50_ms: float
    top1: float
    size_bytes: int
    accuracy_ep: str


def accuracy_points(
    bench: list[dict[str, Any]], evals: list[dict[str, Any]]
) -> tuple[list[AccuracyPoint], int]:
    """Bench entries joined to their model's top-1 accuracy; also how many entries found none.

    An eval entry matches a bench entry with the same model file on the same EP; failing that, the same model
    file on another EP (the point's tooltip names the EP the accuracy was measured on).
    """
    by_file: dict[str, list[dict[str, Any]]] = {}
    for ev in evals:
        if (ev.get("accuracy") or {}).get("top1") is not None:
            by_file.setdefault(os.path.normpath(str(ev.get("model_path", ""))), []).append(ev)
    points, missing = [], 0
    for b in bench:
        candidates = by_file.get(os.path.normpath(str(b.get("model_path", ""))), [])
        match = next(
            (ev for ev in candidates if ev.get("ep") == b.get("ep")), candidates[0] if candidates else None
        )
        if match is None:
            missing += 1
            continue
        points.append(
            AccuracyPoint(
                entry_label(b),
                str(b.get("ep", "")),
                b["latency_ms"]["p50"],
                match["accuracy"]["top1"],
                int(b.get("size_bytes", 0)),
                str(match.get("ep")),
            )
        )
    return points, missing


def accuracy_latency_plot(bench: list[dict[str, Any]], evals: list[dict[str, Any]], width: int = 960) -> str:
    """Scatter: x = p50 latency (from 0, or log where it says so), y = top-1 accuracy (zoomed, and the axis says
    from where), marker area proportional to model size on disk; the EP legend sits above the plot area and
    the point labels inside it."""
    title = "Top-1 accuracy against p50 latency (marker area ∝ model size)"
    points, missing = accuracy_points(bench, evals)
    if not points:
        return _empty(width, title, "no model has both a benchmark and a top-1 accuracy")
    left, right, top, height = 80, 30, 40, 480
    bottom = height - 80
    area = PlotArea(left, width - right, top, bottom)
    biggest = max(p.size_bytes for p in points) or 1
    r_max = _radius(biggest, biggest)
    xs = zero_based_scale([p.p50_ms for p in points], left + r_max, width - right - r_max)
    ys = accuracy_scale([100 * p.top1 for p in points], bottom - r_max, top + r_max)
    body = [
        f'<rect class="plot-area" x="{area.x0:.1f}" y="{area.y0:.1f}" width="{area.x1 - area.x0:.1f}" '
        f'height="{area.y1 - area.y0:.1f}" fill="none"/>',
        *_x_axis(xs, top, bottom, "p50 latency of one batch (ms)"),
        *_y_axis(ys, area),
    ]
    placed = [(p, xs(p.p50_ms), ys(100 * p.top1), _radius(p.size_bytes, biggest)) for p in points]
    for p, x, y, r in sorted(placed, key=lambda t: -t[3]):  # small markers on top of big ones
        body += _accuracy_marker(p, x, y, r)
    body += _point_labels(placed, area)
    note = f"largest marker: {fmt_bytes(biggest)}; marker area ∝ size (radius at least 3 px)"
    if missing:
        note += f"; {missing} bench entr{'y' if missing == 1 else 'ies'} without a top-1 accuracy not shown"
    body.append(_text(left, height - 10, note, size=11, cls="legend"))
    body += _ep_legend(sorted({p.ep for p in points}), area.x1, top - 18)
    return _svg(width, height, title, body)


@dataclass(frozen=True)
class PlotArea:
    """The rectangle inside the axes, in pixels (y grows downwards): labels stay inside it."""

    x0: float
    x1: float
    y0: float
    y1: float


def accuracy_scale(percents: list[float], p0: float, p1: float) -> Scale:
    """Accuracies in percent, padded and widened to whole ticks, inside [0, 100]: a zoomed axis (the y-axis
    label says where it starts), since 0-100% would squash a 0.25-point difference to one pixel."""
    lo, hi = min(percents), max(percents)
    pad = (hi - lo) * 0.15 or 0.5
    lo, hi = max(lo - pad, 0.0), min(hi + pad, 100.0)
    step = _nice_step((hi - lo) / 5)
    return Scale(max(math.floor(lo / step + 1e-9) * step, 0.0), min(math.ceil(hi / step - 1e-9) * step, 100.0), p0, p1)


def _radius(size: int, biggest: int, r_max: float = 26.0) -> float:
    return max(3.0, r_max * math.sqrt(max(size, 0) / biggest))


def _y_axis(scale: Scale, area: PlotArea) -> list[str]:
    out = [f'<line x1="{area.x0:.1f}" y1="{area.y0:.1f}" x2="{area.x0:.1f}" y2="{area.y1:.1f}" stroke="#333"/>']
    for v, text in scale.tick_labels("%"):
        y = scale(v)
        out.append(f'<line x1="{area.x0:.1f}" y1="{y:.1f}" x2="{area.x1:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(_text(area.x0 - 6, y + 4, text, anchor="end", size=11))
    label = "top-1 accuracy" if scale.lo <= 0 else f"top-1 accuracy (zoomed: axis from {scale.tick_labels('%')[0][1]})"
    mid = (area.y0 + area.y1) / 2
    out.append(
        f'<text x="16" y="{mid:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 16 {mid:.1f})">{escape(label)}</text>'
    )
    return out


def _accuracy_marker(p: AccuracyPoint, x: float, y: float, r: float) -> list[str]:
    tip = (
        f"{p.label}: top-1 {fmt_pct(p.top1)} (measured on {p.accuracy_ep}), p50 {fmt_num(p.p50_ms)} ms, "
        f"size {fmt_bytes(p.size_bytes)}"
    )
    return [
        f"<g><title>{escape(tip)}</title>",
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{ep_color(p.ep)}" fill-opacity="0.55" '
        f'stroke="{ep_color(p.ep)}"/>',
        "</g>",
    ]


LABEL_CHAR_PX = 6.5  # a generous average glyph width of 11 px text, for placing labels without a browser
LABEL_LINE_PX = 13.0


def _point_labels(placed: list[tuple[AccuracyPoint, float, float, float]], area: PlotArea) -> list[str]:
    """Labels beside their markers, inside ``area``: right of the marker, or left where the right runs out, cut
    short (…) where neither side has room; nudged up or down until they overlap no earlier label (a float
    model and its quantized copy often have the same accuracy), with a leader line when moved."""
    taken: list[tuple[float, float, float]] = []  # x0, x1, baseline y
    out = []
    for p, x, y, r in sorted(placed, key=lambda t: (t[2], t[1])):
        text, x0 = _label_text_and_x(p.label[:40], x, r, area)
        x1 = x0 + LABEL_CHAR_PX * len(text)
        ty = _free_baseline(y + 4, x0, x1, taken, area)
        taken.append((x0, x1, ty))
        if ty != y + 4:
            side = x + r * 0.7 if x0 > x else x - r * 0.7
            out.append(
                f'<line x1="{side:.1f}" y1="{y + (r * 0.7 if ty > y else -r * 0.7):.1f}" '
                f'x2="{x0 - 1 if x0 > x else x1 + 1:.1f}" y2="{ty - 4:.1f}" stroke="#999" stroke-width="0.8"/>'
            )
        out.append(_text(x0, ty, text, size=11, cls="point-label"))
    return out


def _label_text_and_x(text: str, x: float, r: float, area: PlotArea) -> tuple[str, float]:
    """The label (cut short if it fits on neither side) and its left edge: right of the marker if it fits."""
    room_right, room_left = area.x1 - (x + r + 4), (x - r - 4) - area.x0
    width = LABEL_CHAR_PX * len(text)
    if width <= room_right:
        return text, x + r + 4
    if width <= room_left:
        return text, x - r - 4 - width
    chars = max(int(max(room_right, room_left) / LABEL_CHAR_PX) - 1, 1)
    text = text[:chars] + "…"
    return (text, x + r + 4) if room_right >= room_left else (text, x - r - 4 - LABEL_CHAR_PX * len(text))


def _free_baseline(
    y: float, x0: float, x1: float, taken: list[tuple[float, float, float]], area: PlotArea
) -> float:
    """The baseline nearest ``y`` (down first, then up, one line at a time) where the label overlaps no taken
    one and stays inside the area; ``y`` itself when no line is free."""
    for k in range(0, 2 * int((area.y1 - area.y0) / LABEL_LINE_PX) + 2):
        ty = y + LABEL_LINE_PX * ((k + 1) // 2) * (1 if k % 2 else -1) if k else y
        inside = area.y0 + 11 <= ty <= area.y1 - 3
        if inside and not any(abs(ty - ly) < LABEL_LINE_PX and x0 < lx1 and lx0 < x1 for lx0, lx1, ly in taken):
            return ty
    return y


def _ep_legend(eps: list[str], right: float, y: float) -> list[str]:
    """'● cpu  ● cuda' in one row above the plot area, ending at ``right``: never on top of a point or label."""
    widths = [14 + LABEL_CHAR_PX * 1.1 * len(ep) + 14 for ep in eps]
    x = right - sum(widths)
    out = ['<g class="ep-legend">', _text(x - 6, y + 4, "EP:", anchor="end", size=12)]
    for ep, w in zip(eps, widths, strict=True):
        out.append(f'<circle cx="{x + 6:.1f}" cy="{y:.1f}" r="6" fill="{ep_color(ep)}" fill-opacity="0.55"/>')
        out.append(_text(x + 16, y + 4, ep, size=12))
        x += w
    return [*out, "</g>"]
