"""Charts as server-rendered SVG: pure functions from numbers to markup.

No script, no inline style (the pages' Content-Security-Policy forbids both): colours
come from classes the dashboards' stylesheet defines (``s0``…``s7`` for series,
``limit`` for a threshold such as the SLA). Every text is escaped. A chart of no data
says so instead of drawing empty axes.

    line_chart([Series("p95", [(t0, 12.0), (t1, None), …])], threshold=(200, "SLA"),
               x_labels=[(t0, "10:00"), …], unit="ms")
    bar_chart([("eu-central", 120), ("us-east", 40)], unit="requests")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "line_chart", "bar_chart", "nice_max", "fmt_num"]

W, H = 640, 230
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 24, 34


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float | None]]  # (x, y); None: no data (a gap)
    dashed: bool = False


def nice_max(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ v (an axis' top)."""
    if v <= 0 or not math.isfinite(v):
        return 1.0
    k = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * k >= v - 1e-12:
            return m * k
    return 10 * k


def fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.3g}k"
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.3g}"


def _empty(title: str, message: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {W} 60" role="img" aria-label="{escape(title)}">'
            f'<text class="empty" x="{W / 2}" y="34" text-anchor="middle">{escape(message)}'
            "</text></svg>")


def line_chart(series: Sequence[Series], *, title: str = "", unit: str = "",
               threshold: tuple[float, str] | None = None,
               x_range: tuple[float, float] | None = None,
               x_labels: Sequence[tuple[float, str]] = (), y_min: float = 0.0,
               empty: str = "no data in this period", step: bool = False) -> str:
    """Lines over a shared x axis (e.g. epoch seconds); gaps where y is None."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points if y is not None]
    if not ys:
        return _empty(title, empty)
    x0, x1 = x_range if x_range else (min(xs), max(xs))
    if x1 <= x0:
        x1 = x0 + 1
    top = max(ys + ([threshold[0]] if threshold else []))
    ymax = nice_max(top * 1.05 if top > 0 else 1)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return TOP + ph - (y - y_min) / (ymax - y_min) * ph

    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{escape(title)}">']
    if title:
        out.append(f"<title>{escape(title)}</title>")
    # grid and y labels
    for i in range(5):
        v = y_min + (ymax - y_min) * i / 4
        y = py(v)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}"/>')
        out.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f"{escape(fmt_num(v))}</text>")
    if unit:
        out.append(f'<text class="axis" x="4" y="{TOP - 12}">{escape(unit)}</text>')
    for x, label in x_labels:
        if x0 <= x <= x1:
            out.append(f'<text class="axis" x="{px(x):.1f}" y="{H - BOTTOM + 16}" '
                       f'text-anchor="middle">{escape(label)}</text>')
    out.append(f'<line class="axisline" x1="{LEFT}" y1="{TOP + ph}" x2="{W - RIGHT}" '
               f'y2="{TOP + ph}"/>')
    if threshold is not None:
        y = py(threshold[0])
        out.append(f'<line class="limit" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" '
                   f'y2="{y:.1f}"/>')
        out.append(f'<text class="limit-label" x="{W - RIGHT - 4}" y="{y - 4:.1f}" '
                   f'text-anchor="end">{escape(threshold[1])} {escape(fmt_num(threshold[0]))}'
                   "</text>")
    for i, s in enumerate(series):
        cls = f"line s{i % 8}" + (" dashed" if s.dashed else "")
        runs: list[list[tuple[float, float]]] = [[]]
        for x, y in sorted(s.points, key=lambda p: p[0]):
            if y is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((px(x), py(y)))
        for run in runs:
            if not run:
                continue
            if len(run) == 1:
                x, y = run[0]
                out.append(f'<circle class="dot s{i % 8}" cx="{x:.1f}" cy="{y:.1f}" r="2.5"/>')
                continue
            pts = []
            for j, (x, y) in enumerate(run):
                if step and j:
                    pts.append(f"{x:.1f},{run[j - 1][1]:.1f}")
                pts.append(f"{x:.1f},{y:.1f}")
            out.append(f'<polyline class="{cls}" points="{" ".join(pts)}"/>')
    # legend
    lx = LEFT
    for i, s in enumerate(series):
        out.append(f'<rect class="swatch s{i % 8}" x="{lx}" y="{H - 12}" width="10" '
                   'height="10"/>')
        out.append(f'<text class="legend" x="{lx + 14}" y="{H - 3}">{escape(s.label)}</text>')
        lx += 24 + 7 * len(s.label)
    out.append("</svg>")
    return "".join(out)


def bar_chart(items: Sequence[tuple[str, float]], *, title: str = "", unit: str = "",
              empty: str = "no data in this period") -> str:
    """Horizontal bars, one per (label, value), largest first as given."""
    if not items or not any(v for _, v in items):
        return _empty(title, empty)
    row = 22
    h = TOP + row * len(items) + 8
    label_w = min(180, 12 + 7 * max(len(lbl) for lbl, _ in items))
    vmax = nice_max(max(v for _, v in items))
    bw = W - label_w - 70
    out = [f'<svg class="chart bars" viewBox="0 0 {W} {h}" role="img" '
           f'aria-label="{escape(title)}">']
    if title:
        out.append(f"<title>{escape(title)}</title>")
    for i, (label, v) in enumerate(items):
        y = TOP + i * row
        w = max(0.0, v / vmax * bw)
        out.append(f'<text class="axis" x="{label_w - 6}" y="{y + 14}" text-anchor="end">'
                   f"{escape(label)}</text>")
        out.append(f'<rect class="bar s{i % 8}" x="{label_w}" y="{y + 3}" width="{w:.1f}" '
                   'height="15"/>')
        out.append(f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + 14}">'
                   f"{escape(fmt_num(v))}{(' ' + escape(unit)) if unit else ''}</text>")
    out.append("</svg>")
    return "".join(out)
