"""Inline SVG charts: sparklines, bar charts, timelines. Plain strings, no JavaScript.

Colours come from CSS classes (``bar``, ``axis``, ``seg-on``, ``seg-gap``), so
the charts follow the page's light or dark theme.
"""
from __future__ import annotations

from html import escape
from typing import Sequence


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def sparkline(values: Sequence[float], width: int = 120, height: int = 24, title: str = "") -> str:
    """A row of small bars (e.g. detections per hour), scaled to the largest."""
    n = max(len(values), 1)
    top = max(values, default=0) or 1
    w = width / n
    bars = []
    for i, v in enumerate(values):
        if v <= 0:
            continue
        h = max(1.0, (height - 1) * v / top)
        bars.append(f'<rect class="bar" x="{_num(i * w + 0.5)}" y="{_num(height - h)}" '
                    f'width="{_num(max(w - 1, 1))}" height="{_num(h)}"/>')
    label = escape(title) if title else "activity"
    return (f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{label}"><title>{label}</title>'
            f'<line class="axis" x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}"/>{"".join(bars)}</svg>')


def bar_chart(values: Sequence[float], labels: Sequence[str], *, title: str, width: int = 640, height: int = 180,
              every: int = 1) -> str:
    """Bars with a value axis and category labels (every ``every``-th shown)."""
    pad_l, pad_b, pad_t = 36, 22, 8
    n = max(len(values), 1)
    top = max(values, default=0) or 1
    plot_w, plot_h = width - pad_l - 4, height - pad_b - pad_t
    w = plot_w / n
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
             f'<title>{escape(title)}</title>']
    for frac in (0, 0.5, 1):
        y = pad_t + plot_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{pad_l}" y1="{_num(y)}" x2="{width - 4}" y2="{_num(y)}"/>'
                     f'<text class="tick" x="{pad_l - 4}" y="{_num(y + 4)}" text-anchor="end">{_num(top * frac)}</text>')
    for i, (v, lab) in enumerate(zip(values, labels)):
        x = pad_l + i * w
        if v > 0:
            h = max(1.0, plot_h * v / top)
            parts.append(f'<rect class="bar" x="{_num(x + w * 0.1)}" y="{_num(pad_t + plot_h - h)}" '
                         f'width="{_num(max(w * 0.8, 1))}" height="{_num(h)}"><title>{escape(lab)}: {_num(v)}</title></rect>')
        if i % every == 0:
            parts.append(f'<text class="tick" x="{_num(x + w / 2)}" y="{height - 6}" text-anchor="middle">'
                         f'{escape(lab)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def timeline(rows: Sequence[tuple[str, list[tuple[float, float, str]]]], *, title: str, width: int = 720,
             row_h: int = 18) -> str:
    """One row per day: segments as (start hour, end hour, kind) with kind ``on`` (listening) or ``gap``."""
    pad_l, pad_t = 84, 18
    plot_w = width - pad_l - 6
    height = pad_t + row_h * max(len(rows), 1) + 4
    parts = [f'<svg class="chart timeline" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
             f'<title>{escape(title)}</title>']
    for hour in range(0, 25, 3):
        x = pad_l + plot_w * hour / 24
        parts.append(f'<line class="grid" x1="{_num(x)}" y1="{pad_t - 4}" x2="{_num(x)}" y2="{height - 4}"/>'
                     f'<text class="tick" x="{_num(x)}" y="{pad_t - 7}" text-anchor="middle">{hour:02d}</text>')
    for r, (day, segs) in enumerate(rows):
        y = pad_t + r * row_h
        parts.append(f'<text class="tick" x="{pad_l - 6}" y="{y + row_h * 0.7:.1f}" text-anchor="end">{escape(day)}</text>'
                     f'<rect class="seg-off" x="{pad_l}" y="{y + 3}" width="{plot_w}" height="{row_h - 6}"/>')
        for a, b, kind in segs:
            a, b = max(0.0, min(24.0, a)), max(0.0, min(24.0, b))
            if b <= a:
                continue
            x = pad_l + plot_w * a / 24
            w = max(plot_w * (b - a) / 24, 1.5 if kind == "gap" else 0.5)
            hh = lambda t: f"{int(t):02d}:{int(round(t % 1 * 60)) % 60:02d}"  # noqa: E731
            parts.append(f'<rect class="seg-{"gap" if kind == "gap" else "on"}" x="{_num(x)}" y="{y + 3}" '
                         f'width="{_num(w)}" height="{row_h - 6}"><title>{escape(day)} {hh(a)}-{hh(b)} '
                         f'{"lost" if kind == "gap" else "listening"}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)
