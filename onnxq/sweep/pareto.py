"""The sweep's Pareto plot, one per (model, EP, batch), as inline SVG drawn with onnxq.report.svg's parts.

x: p50 latency of one batch; y: SQNR of the first output against the float model (dB); marker area
proportional to the quantized file's size. Recipes on the Pareto front (no other recipe is both faster and
closer to float) are drawn in the EP's colour and joined by a step line, the others in grey; the winner
under the spec's target has a black ring; the float model's p50 is a dashed vertical line.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from onnxq.report.svg import (
    PlotArea,
    Scale,
    _empty,
    _point_labels,
    _radius,
    _svg,
    _text,
    _x_axis,
    ep_color,
    value_scale,
)
from onnxq.report.tables import fmt_bytes, fmt_num

WIDTH, HEIGHT = 760, 380
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 20, 300


@dataclass(frozen=True)
class _Label:
    label: str  # what _point_labels reads


def pareto_plot(group: list[dict[str, Any]], float_p50: float | None, winner: str | None) -> str:
    """The plot of one (model, EP, batch) group of result rows (recipes only)."""
    first = group[0] if group else {}
    title = f"{first.get('model', '?')} · {first.get('ep', '?')} · batch {first.get('batch', '?')}: SQNR against p50"
    points = [r for r in group if r.get("p50_ms") is not None and r.get("sqnr_db") is not None]
    if not points:
        return _empty(WIDTH, title, "no recipe has both a latency and an SQNR")
    lat = [r["p50_ms"] for r in points] + ([float_p50] if float_p50 else [])
    xs = value_scale(lat, LEFT + 20, WIDTH - RIGHT, floor=0.0)
    ys = value_scale([r["sqnr_db"] for r in points], BOTTOM - 10, TOP + 10, log_ok=False)
    body = _x_axis(xs, TOP, BOTTOM, "p50 latency of one batch (ms)") + _db_axis(ys, LEFT, WIDTH - RIGHT, BOTTOM)
    if float_p50:
        x = xs(float_p50)
        body += [f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{BOTTOM}" stroke="#555" stroke-dasharray="5,4"/>',
                 _text(x + 4, TOP + 12, f"float p50 {fmt_num(float_p50)} ms", size=11, cls="legend")]  # fmt: skip
    body += _front_line([r for r in points if r.get("pareto")], xs, ys)
    biggest = max(r.get("size_bytes") or 0 for r in points) or 1
    placed = [(r, xs(r["p50_ms"]), ys(r["sqnr_db"]), _radius(r.get("size_bytes") or 0, biggest, 18.0)) for r in points]
    for r, x, y, rad in sorted(placed, key=lambda t: -t[3]):
        body += _marker(r, x, y, rad, r["recipe"] == winner)
    area = PlotArea(LEFT, WIDTH - RIGHT, TOP, BOTTOM)
    body += _point_labels([(_Label(r["recipe"]), x, y, rad) for r, x, y, rad in placed], area)
    note = f"largest marker: {fmt_bytes(biggest)} · coloured: Pareto front · ring: winner under the target"
    body.append(_text(LEFT, HEIGHT - 10, note, size=11, cls="legend"))
    return _svg(WIDTH, HEIGHT, title, body)


def _db_axis(scale: Scale, left: float, right: float, bottom: float) -> list[str]:
    out = [f'<line x1="{left:.1f}" y1="{scale.p1:.1f}" x2="{left:.1f}" y2="{bottom:.1f}" stroke="#333"/>']
    for v in scale.ticks():
        y = scale(v)
        out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(_text(left - 6, y + 4, fmt_num(v), anchor="end", size=11))
    mid = (scale.p0 + scale.p1) / 2
    out.append(f'<text x="16" y="{mid:.1f}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 16 {mid:.1f})">SQNR vs float (dB)</text>')  # fmt: skip
    return out


def _front_line(front: list[dict[str, Any]], xs: Scale, ys: Scale) -> list[str]:
    """A step line through the front, fastest first: each step down is what the next speed-up costs."""
    pts = sorted((xs(r["p50_ms"]), ys(r["sqnr_db"])) for r in front)
    if len(pts) < 2:
        return []
    path = [f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"]
    for x1, y1 in pts[1:]:
        path.append(f"H{x1:.1f}V{y1:.1f}")
    color = ep_color(front[0].get("ep", ""))
    return [f'<path d="{"".join(path)}" fill="none" stroke="{color}" stroke-width="1.5" stroke-opacity="0.6"/>']


def _marker(r: dict[str, Any], x: float, y: float, rad: float, winner: bool) -> list[str]:
    color = ep_color(r.get("ep", "")) if r.get("pareto") else "#9a9a9a"
    tip = (f"{r['recipe']}: SQNR {fmt_num(r['sqnr_db'])} dB, p50 {fmt_num(r['p50_ms'])} ms, "
           f"size {fmt_bytes(r.get('size_bytes'))}" + (" (winner)" if winner else ""))  # fmt: skip
    out = [
        f"<g><title>{escape(tip)}</title>",
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{rad:.1f}" fill="{color}" fill-opacity="0.55" stroke="{color}"/>',
    ]
    if winner:
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{rad + 4:.1f}" fill="none" stroke="#111" stroke-width="2"/>')
    return out + ["</g>"]
