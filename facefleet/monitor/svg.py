"""Tiny inline-SVG chart helpers for the self-contained run report (no JS, no external assets).

Every function returns an ``<svg>`` string sized in CSS pixels; text is HTML-escaped. Colours come
from one qualitative palette so a GPU keeps its colour across charts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = [
    "#2563eb",
    "#ea580c",
    "#16a34a",
    "#9333ea",
    "#dc2626",
    "#0891b2",
    "#ca8a04",
    "#db2777",
    "#4b5563",
    "#65a30d",
    "#7c3aed",
    "#0d9488",
    "#b45309",
    "#be123c",
    "#1d4ed8",
    "#15803d",
]

Series = tuple[str, Sequence[float], Sequence[float]]  # (label, xs, ys)


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 x 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks: list[float] = []
    v = start
    while v < hi + step * 0.5 and len(ticks) < 50:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 10))
    return ticks


def fmt_num(v: float) -> str:
    """Compact human number: 1234567 -> '1.23M', 0.00123 -> '0.00123', 42.0 -> '42'."""
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3g}G"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a == 0 or a >= 1:
        return f"{v:.4g}"
    return f"{v:.3g}"


def fmt_seconds(s: float) -> str:
    """Seconds -> '850 ms', '12.3 s', '4m 05s', '2h 03m'."""
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def line_chart(
    series: Sequence[Series],
    *,
    width: int = 560,
    height: int = 240,
    x_label: str = "",
    y_label: str = "",
    y_min: float | None = 0.0,
    y_max: float | None = None,
    area: bool = False,
) -> str:
    """Lines (one per series) on shared axes, with grid, tick labels and a legend."""
    pts = [
        (x, y)
        for _, xs, ys in series
        for x, y in zip(xs, ys, strict=False)
        if math.isfinite(x) and math.isfinite(y)
    ]
    if not pts:
        return empty_chart("no data", width=width, height=height)
    left, right, top, bottom = 56, 14, 14 + (18 if len(series) > 1 else 0), 38
    pw, ph = width - left - right, height - top - bottom
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    if x1 <= x0:
        x1 = x0 + 1.0
    lo = min(p[1] for p in pts) if y_min is None else y_min
    hi = max(p[1] for p in pts) if y_max is None else y_max
    yt = nice_ticks(lo, hi if hi > lo else lo + 1.0)
    ylo, yhi = yt[0], yt[-1]
    xt = [t for t in nice_ticks(x0, x1, 6) if x0 - 1e-9 <= t <= x1 + 1e-9]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - ylo) / (yhi - ylo) * ph

    out = [_open(width, height)]
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{fmt_num(t)}</text>')
    for t in xt:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" class="axis"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{fmt_num(t)}</text>'
        )
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>')
    if x_label:
        out.append(
            f'<text x="{left + pw / 2:.0f}" y="{height - 4}" text-anchor="middle" class="label">'
            f"{escape(x_label)}</text>"
        )
    if y_label:
        out.append(
            f'<text x="12" y="{top + ph / 2:.0f}" text-anchor="middle" class="label" '
            f'transform="rotate(-90 12 {top + ph / 2:.0f})">{escape(y_label)}</text>'
        )
    for i, (label, xs, ys) in enumerate(series):
        c = color(i)
        p = [
            (sx(x), sy(min(max(y, ylo), yhi)))
            for x, y in zip(xs, ys, strict=False)
            if math.isfinite(x) and math.isfinite(y)
        ]
        if not p:
            continue
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in p)
        if area and len(series) == 1:
            base = sy(max(ylo, 0.0))
            out.append(
                f'<polygon points="{p[0][0]:.1f},{base:.1f} {path} {p[-1][0]:.1f},{base:.1f}" '
                f'fill="{c}" fill-opacity="0.12" stroke="none"/>'
            )
        if len(p) == 1:
            out.append(f'<circle cx="{p[0][0]:.1f}" cy="{p[0][1]:.1f}" r="3" fill="{c}"/>')
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="1.8" '
            f'stroke-linejoin="round"><title>{escape(label)}</title></polyline>'
        )
    if len(series) > 1:
        lx = left
        for i, (label, _, _) in enumerate(series):
            out.append(f'<rect x="{lx}" y="4" width="10" height="10" rx="2" fill="{color(i)}"/>')
            out.append(f'<text x="{lx + 14}" y="13" class="legend">{escape(label)}</text>')
            lx += 24 + 7 * len(label)
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    items: Sequence[tuple[str, float, str]],
    *,
    width: int = 560,
    bar_h: int = 22,
    unit: str = "",
    colors: Sequence[str] | None = None,
) -> str:
    """Horizontal bars. ``items``: (label, value, annotation shown right of the bar)."""
    if not items:
        return empty_chart("no data", width=width, height=60)
    label_w = min(200, 16 + 7 * max(len(lab) for lab, _, _ in items))
    ann_w = min(300, 16 + 7 * max(len(a) for _, _, a in items))
    top, gap = 6, 6
    height = top * 2 + len(items) * (bar_h + gap)
    pw = width - label_w - ann_w
    vmax = max((v for _, v, _ in items), default=0.0) or 1.0
    out = [_open(width, height)]
    for i, (label, v, ann) in enumerate(items):
        y = top + i * (bar_h + gap)
        w = max(0.0, v) / vmax * pw
        c = colors[i % len(colors)] if colors else color(0)
        out.append(
            f'<text x="{label_w - 8}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end" class="barlabel">'
            f"{escape(label)}</text>"
        )
        out.append(f'<rect x="{label_w}" y="{y}" width="{pw:.1f}" height="{bar_h}" rx="3" class="track"/>')
        out.append(
            f'<rect x="{label_w}" y="{y}" width="{max(w, 1.5):.1f}" height="{bar_h}" rx="3" '
            f'fill="{c}"><title>{escape(label)}: {fmt_num(v)}{escape(unit)}</title></rect>'
        )
        out.append(
            f'<text x="{label_w + pw + 8}" y="{y + bar_h / 2 + 4:.1f}" class="barann">{escape(ann)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def stacked_bar(parts: Sequence[tuple[str, float]], *, width: int = 560, height: int = 26) -> str:
    """One bar split into proportional parts (e.g. share of time per stage), with a legend."""
    total = sum(max(v, 0.0) for _, v in parts)
    if total <= 0:
        return empty_chart("no data", width=width, height=40)
    legend_rows = math.ceil(len(parts) / 4)
    h = height + 8 + legend_rows * 18
    out = [_open(width, h)]
    x = 0.0
    for i, (label, v) in enumerate(parts):
        w = max(v, 0.0) / total * width
        out.append(
            f'<rect x="{x:.2f}" y="0" width="{w:.2f}" height="{height}" fill="{color(i)}">'
            f"<title>{escape(label)}: {100 * v / total:.1f}%</title></rect>"
        )
        if w > 44:
            out.append(
                f'<text x="{x + w / 2:.1f}" y="{height / 2 + 4:.1f}" text-anchor="middle" '
                f'class="inbar">{100 * v / total:.0f}%</text>'
            )
        x += w
    for i, (label, v) in enumerate(parts):
        lx, ly = (i % 4) * (width / 4), height + 8 + (i // 4) * 18
        out.append(f'<rect x="{lx:.0f}" y="{ly}" width="10" height="10" rx="2" fill="{color(i)}"/>')
        out.append(
            f'<text x="{lx + 14:.0f}" y="{ly + 9}" class="legend">{escape(label)} '
            f"{100 * v / total:.1f}%</text>"
        )
    out.append("</svg>")
    return "".join(out)


def empty_chart(message: str, *, width: int = 560, height: int = 80) -> str:
    return (
        f'{_open(width, height)}<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="6" '
        f'class="empty"/><text x="{width / 2:.0f}" y="{height / 2 + 4:.0f}" text-anchor="middle" '
        f'class="tick">{escape(message)}</text></svg>'
    )


def _open(width: int, height: int) -> str:
    # scales down with its container (width 100%, at most its natural width), keeps proportions
    return (
        f'<svg viewBox="0 0 {width} {height}" role="img" preserveAspectRatio="xMinYMin meet" '
        f'style="width:100%;max-width:{width}px;height:auto;display:block">'
    )
