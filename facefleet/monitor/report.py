"""The run report: ``OUT/report.json`` (stats + derived figures) and a self-contained
``OUT/report.html`` (inline CSS and SVG plots; no scripts, fonts or links to fetch).

``write_report(out_dir, stats)`` takes the dict the engine writes to ``OUT/stats.json``. Every
block is optional; the keys read are::

    wall_seconds | seconds                   float, wall time of the run
    started_at, finished_at                  ISO string or epoch seconds
    input, output                            str
    totals: images, faces, no_face, failed, units, skipped_units / units_skipped,
            failed_by_reason {reason: count}
    failures | failure_examples              [{"source", "reason", "error"}]  (a few per reason)
    workers   list of {worker|id|name, device, units, images, faces, seconds, busy_seconds}
              or {worker id: {...}}
    stages | stage_seconds                   {"read": s, "decode": s, "detect": s, "mesh": s, ...}
    throughput  list of {"t", "images", "faces"} (cumulative counts at t seconds; or per-interval
              "images_per_s"/"faces_per_s"), or {"t": [...], "images": [...], ...}
    batch_latency {"p50", "p99", ...} seconds, or batch_seconds / batch_latencies [s, ...]
    batch_stages {"columns": ["t", "decode", "slot_wait", "wait_input", "networks"], "rows": [...]}
              per batch: when it was done and its seconds (see facefleet.engine.worker.BATCH_STAGES)
    gpu | gpu_samples   GpuSampler.to_dict(): {"samples": [...], "summary": {...}}
    gpu_memory_peak_mib {device: MiB} torch.cuda.max_memory_allocated of the workers, summed per device
    config | configuration                   dict of the settings used
    sessions  [{"start", "end", "images", "faces", "failed", "status", "wall_seconds"}]  each start
              or resume of the run (wall_seconds is then their sum: rates are over the sessions' own
              times, so a resume or a no-op re-run never inflates them)
    skipped_inputs {"count", "by_reason", "examples": [{"source", "reason"}]}  listed entries that
              are not read (FIFOs, sockets, symlink loops, unreadable folders)
    manifest_repairs {"void_units": [...], "moved": [...]}  what a resume found damaged and redid
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from html import escape
from pathlib import Path
from typing import Any

from facefleet.monitor import svg

__all__ = ["derive", "render_html", "steady_batch_stages", "write_report"]

_STAGE_ORDER = [
    "list",
    "read",
    "decode",
    "slot_copy",
    "upload",
    "detect",
    "mesh",
    "geometry",
    "texture",
    "transfer",
    "export",
    "write",
    "wait",
]


# --------------------------------------------------------------------------------------------
# normalisation and derived figures
# --------------------------------------------------------------------------------------------
def _num(v: Any, default: float = 0.0) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


def _workers(stats: dict[str, Any]) -> list[dict[str, Any]]:
    w = stats.get("workers") or stats.get("per_worker") or []
    if isinstance(w, dict):
        rows = [{"worker": str(k), **(v if isinstance(v, dict) else {})} for k, v in w.items()]
    else:
        rows = [dict(r) for r in w if isinstance(r, dict)]
    for i, r in enumerate(rows):
        r["worker"] = str(r.get("worker", r.get("id", r.get("name", i))))
    return rows


def _is_wait(stage: str) -> bool:
    return stage.startswith("wait_") or stage.endswith("_wait")


def _stages(stats: dict[str, Any], waits: bool = False) -> dict[str, float]:
    """Seconds per stage (work), or with ``waits`` the waits (the networks' threads' ``wait_*``: for
    decoded images, for the file writers; the decoder process's ``slot_wait`` for a free slot), which
    are idle time rather than a share of the work."""
    st = stats.get("stages") or stats.get("stage_seconds") or {}
    if not isinstance(st, dict):
        return {}
    vals = {
        str(k): _num(v.get("seconds") if isinstance(v, dict) else v)
        for k, v in st.items()
        if _is_wait(str(k)) == waits
    }
    order = {k: i for i, k in enumerate(_STAGE_ORDER)}
    return dict(sorted(vals.items(), key=lambda kv: order.get(kv[0], len(order))))


def _throughput(stats: dict[str, Any]) -> dict[str, list[float]]:
    """-> {"t": [...], "images_per_s": [...], "faces_per_s": [...]} (rates per interval)."""
    tp = stats.get("throughput") or stats.get("timeline") or []
    if isinstance(tp, dict):
        keys = list(tp)
        n = len(tp.get("t", []))
        rows = [{k: tp[k][i] for k in keys if isinstance(tp[k], list) and i < len(tp[k])} for i in range(n)]
    else:
        rows = [r for r in tp if isinstance(r, dict)]
    rows = sorted((r for r in rows if "t" in r), key=lambda r: _num(r["t"]))
    t = [_num(r["t"]) for r in rows]
    out: dict[str, list[float]] = {"t": [], "images_per_s": [], "faces_per_s": []}
    if not rows:
        return out
    if "images_per_s" in rows[0]:
        out["t"] = t
        out["images_per_s"] = [_num(r.get("images_per_s")) for r in rows]
        out["faces_per_s"] = [_num(r.get("faces_per_s")) for r in rows]
        return out
    # cumulative counts -> rate over each interval (plotted at the interval's end)
    prev_t, prev_i, prev_f = 0.0, 0.0, 0.0
    for r, tt in zip(rows, t, strict=True):
        dt = tt - prev_t
        im, fa = _num(r.get("images")), _num(r.get("faces"))
        if dt > 0:
            out["t"].append(tt)
            out["images_per_s"].append((im - prev_i) / dt)
            out["faces_per_s"].append((fa - prev_f) / dt)
        prev_t, prev_i, prev_f = tt, im, fa
    return out


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _latency(stats: dict[str, Any]) -> dict[str, float]:
    bl = stats.get("batch_latency")
    if isinstance(bl, dict):
        return {str(k): _num(v) for k, v in bl.items() if isinstance(v, (int, float))}
    xs = stats.get("batch_seconds") or stats.get("batch_latencies") or (bl if isinstance(bl, list) else None)
    if not xs:
        return {}
    xs = [_num(x) for x in xs]
    return {
        "n": float(len(xs)),
        "mean": sum(xs) / len(xs),
        "p50": _percentile(xs, 50),
        "p90": _percentile(xs, 90),
        "p99": _percentile(xs, 99),
        "max": max(xs),
    }


def steady_batch_stages(table: Any, lo: float = 0.1, hi: float = 0.9) -> dict[str, float]:
    """Median milliseconds per batch of each per-batch stage (``batch_stages``: decoding, the decoder's
    wait for a free slot, the networks' wait for the batch, the networks' time) over the batches done
    between ``lo`` and ``hi`` of all batches (start-up and tail left out, as for a steady rate)."""
    if not isinstance(table, dict) or not table.get("rows") or not table.get("columns"):
        return {}
    cols = [str(c) for c in table["columns"]]
    rows = sorted(table["rows"])
    a, b = int(lo * len(rows)), max(int(hi * len(rows)), int(lo * len(rows)) + 1)
    return {
        c: round(_percentile([_num(r[k]) for r in rows[a:b]], 50) * 1e3, 2)
        for k, c in enumerate(cols)
        if c != "t"
    }


def bound_verdict(ms: dict[str, float]) -> str | None:
    """Which side of a worker bounds it in the steady state, from :func:`steady_batch_stages`: reading
    and decoding when the networks wait for decoded batches (over 5 % of their time per batch), else
    the networks (decoded batches are there when they want one; the decoder process may be waiting for
    them to free a slot). None without the figures."""
    net = ms.get("networks")
    if not net:
        return None
    if ms.get("wait_input", 0.0) > 0.05 * net:
        return "reading and decoding: the networks wait for decoded batches"
    if ms.get("slot_wait", 0.0) > 0:
        return "the networks: the decoder waits for them to free a slot"
    return "the networks: decoded batches are ready when they want one"


def _gpu(stats: dict[str, Any]) -> dict[str, Any]:
    g = stats.get("gpu") or stats.get("gpu_samples") or {}
    if isinstance(g, list):
        g = {"samples": g}
    if not isinstance(g, dict):
        return {"samples": [], "summary": {}}
    samples = g.get("samples") or []
    summary = g.get("summary")
    if not summary:
        from facefleet.monitor.gpu import summarize_samples

        summary = summarize_samples(samples)
    return {"samples": samples, "summary": summary, "interval": g.get("interval")}


def _wall(stats: dict[str, Any]) -> float:
    for k in ("wall_seconds", "seconds", "elapsed", "duration_s"):
        if k in stats:
            return _num(stats[k])
    tp = _throughput(stats)
    return tp["t"][-1] if tp["t"] else 0.0


def derive(stats: dict[str, Any]) -> dict[str, Any]:
    """Derived figures: rates, per-stage share, per-worker rates, per-GPU utilisation, latency."""
    totals = dict(stats.get("totals") or {})
    wall = _wall(stats)
    images, faces = _num(totals.get("images")), _num(totals.get("faces"))
    stages = _stages(stats)
    stage_total = sum(stages.values())
    workers = _workers(stats)
    gpu = _gpu(stats)
    per_worker = []
    for w in workers:
        secs = _num(w.get("seconds"))
        busy = _num(w.get("busy_seconds"), secs)
        per_worker.append(
            {
                "worker": w["worker"],
                "device": w.get("device"),
                "units": int(_num(w.get("units"))),
                "images": int(_num(w.get("images"))),
                "images_per_s": _num(w.get("images")) / secs if secs > 0 else None,
                "busy_fraction": busy / wall if wall > 0 and "busy_seconds" in w else None,
            }
        )
    return {
        "wall_seconds": wall,
        "images_per_s": images / wall if wall > 0 else None,
        "faces_per_s": faces / wall if wall > 0 else None,
        "faces_per_image": faces / images if images > 0 else None,
        "stage_seconds_total": stage_total,
        "stage_share": {k: v / stage_total for k, v in stages.items()} if stage_total > 0 else {},
        "waits": _stages(stats, waits=True),
        "per_worker": per_worker,
        "per_gpu": gpu["summary"].get("gpus", {}),
        "host": {k: gpu["summary"].get(k) for k in ("cpu_percent_mean", "cpu_percent_max", "rss_mib_peak")},
        "batch_latency": _latency(stats),
        "batch_stages_ms": (steady := steady_batch_stages(stats.get("batch_stages"))),
        "bound": bound_verdict(steady),
    }


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2937;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#111827;color:#f9fafb;padding:22px 32px}
header h1{margin:0;font-size:22px;font-weight:600;letter-spacing:.2px}
header .sub{color:#9ca3af;margin-top:4px;font-size:13px;word-break:break-all}
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(165px,1fr));gap:12px;margin-bottom:18px}
.card{background:#fff;border-radius:10px;padding:14px 16px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
.card .v{font-size:24px;white-space:nowrap;font-weight:650;font-variant-numeric:tabular-nums}
.card .k{color:#6b7280;font-size:12px;text-transform:uppercase;letter-spacing:.6px}
.card.bad .v{color:#dc2626}.card.good .v{color:#16a34a}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:16px}
section{background:#fff;border-radius:10px;padding:16px 18px 14px;box-shadow:0 1px 2px rgba(0,0,0,.06);
margin-bottom:16px;overflow-x:auto}
section h2{margin:0 0 10px;font-size:15px;font-weight:600}
section .note{color:#6b7280;font-size:12px;margin:-6px 0 8px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{color:#6b7280;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.4px}
td.n,th.n{text-align:right}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#374151;word-break:break-all}
.reason{display:inline-block;background:#fee2e2;color:#991b1b;border-radius:4px;padding:1px 6px;
font-size:12px}
svg text{font-family:inherit}
svg .grid{stroke:#e5e7eb;stroke-width:1}svg .axis{stroke:#9ca3af;stroke-width:1}
svg .tick{fill:#6b7280;font-size:11px}svg .label{fill:#4b5563;font-size:11px}
svg .legend{fill:#374151;font-size:11px}svg .barlabel{fill:#374151;font-size:12px}
svg .barann{fill:#4b5563;font-size:12px}svg .inbar{fill:#fff;font-size:11px;font-weight:600}
svg .track{fill:#f3f4f6}svg .empty{fill:#fafafa;stroke:#e5e7eb}
footer{color:#9ca3af;font-size:12px;text-align:center;margin-top:8px}
"""


def _when(v: Any) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, (int, float)):
        return _dt.datetime.fromtimestamp(float(v), tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(v)


def _card(key: str, value: str, cls: str = "") -> str:
    return (
        f'<div class="card {cls}"><div class="v">{escape(value)}</div>'
        f'<div class="k">{escape(key)}</div></div>'
    )


def _int(v: Any) -> str:
    return f"{int(_num(v)):,}"


def _section(title: str, body: str, note: str = "") -> str:
    n = f'<p class="note">{escape(note)}</p>' if note else ""
    return f"<section><h2>{escape(title)}</h2>{n}{body}</section>"


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        out: list[tuple[str, Any]] = []
        for k, v in d.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, d)]


def render_html(stats: dict[str, Any], derived: dict[str, Any] | None = None) -> str:
    """The report page as one HTML string (inline CSS + SVG, nothing fetched)."""
    d = derive(stats) if derived is None else derived
    totals = stats.get("totals") or {}
    title = "facefleet run report"
    sub = " → ".join(escape(str(stats[k])) for k in ("input", "output") if stats.get(k))
    times = " · ".join(x for x in (_when(stats.get("started_at")), _when(stats.get("finished_at"))) if x)
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style>'
        f'</head><body><header><h1>{title}</h1><div class="sub">{sub}</div>'
        f'<div class="sub">{escape(times)}</div></header><main>'
    ]

    # -- headline cards ----------------------------------------------------------------------
    failed = _num(totals.get("failed"))
    cards = [
        _card("images", _int(totals.get("images"))),
        _card("faces", _int(totals.get("faces"))),
        _card("no face", _int(totals.get("no_face"))),
        _card("failed", _int(failed), "bad" if failed else "good"),
        _card("images / s", svg.fmt_num(d["images_per_s"]) if d["images_per_s"] else "–"),
        _card("faces / s", svg.fmt_num(d["faces_per_s"]) if d["faces_per_s"] else "–"),
        _card("wall time", svg.fmt_seconds(d["wall_seconds"]) if d["wall_seconds"] else "–"),
    ]
    lat = d["batch_latency"]
    if lat.get("p50") is not None:
        cards.append(_card("batch p50 / p99 (s)", f"{lat['p50']:.2g} / {lat.get('p99', lat['p50']):.2g}"))
    parts.append(f'<div class="cards">{"".join(cards)}</div>')

    # -- throughput --------------------------------------------------------------------------
    tp = _throughput(stats)
    series: list[svg.Series] = [("images/s", tp["t"], tp["images_per_s"])]
    if any(tp["faces_per_s"]):
        series.append(("faces/s", tp["t"], tp["faces_per_s"]))
    parts.append(
        _section(
            "Throughput over time",
            svg.line_chart(
                series,
                width=1090,
                height=260,
                x_label="seconds since start",
                y_label="per second",
                area=len(series) == 1,
            ),
        )
    )

    # -- GPUs and host -------------------------------------------------------------------------
    gpu = _gpu(stats)
    samples = gpu["samples"]
    gidx = sorted({int(g["index"]) for s in samples for g in s.get("gpus", [])})
    charts = []
    if gidx:

        def gseries(field: str, scale: float = 1.0) -> list[svg.Series]:
            out: list[svg.Series] = []
            for i in gidx:
                xs, ys = [], []
                for s in samples:
                    for g in s.get("gpus", []):
                        if int(g["index"]) == i and g.get(field) is not None:
                            xs.append(_num(s["t"]))
                            ys.append(_num(g[field]) * scale)
                out.append((f"GPU {i}", xs, ys))
            return out

        mem_total = max((_num(v.get("mem_total_mib")) for v in d["per_gpu"].values()), default=0.0) / 1024
        charts.append(
            _section("GPU utilisation (%)", svg.line_chart(gseries("util"), y_max=100, x_label="seconds"))
        )
        charts.append(
            _section(
                "GPU memory used (GiB)",
                svg.line_chart(gseries("mem_used_mib", 1 / 1024), y_max=None, x_label="seconds"),
                f"of {mem_total:.0f} GiB per GPU" if mem_total else "",
            )
        )
    hs = [s for s in samples if s.get("cpu_percent") is not None]
    if hs:
        charts.append(
            _section(
                "Host CPU (%)",
                svg.line_chart(
                    [("CPU", [_num(s["t"]) for s in hs], [_num(s["cpu_percent"]) for s in hs])],
                    y_max=100,
                    x_label="seconds",
                    area=True,
                ),
            )
        )
    rs = [s for s in samples if s.get("rss_mib") is not None]
    if rs:
        charts.append(
            _section(
                "Host memory, RSS of the run's processes (GiB)",
                svg.line_chart(
                    [("RSS", [_num(s["t"]) for s in rs], [_num(s["rss_mib"]) / 1024 for s in rs])],
                    x_label="seconds",
                    area=True,
                ),
            )
        )
    if not samples:
        charts.append(_section("GPU utilisation", svg.empty_chart("no GPU / host samples were recorded")))
    parts.append(f'<div class="grid2">{"".join(charts)}</div>')

    if d["per_gpu"]:
        peak = stats.get("gpu_memory_peak_mib") or {}
        rows = "".join(
            f"<tr><td>GPU {escape(i)}</td><td>{escape(str(g.get('name') or ''))}</td>"
            f'<td class="n">{_opt(g.get("util_mean"), "{:.0f}%")}</td>'
            f'<td class="n">{_opt(g.get("util_max"), "{:.0f}%")}</td>'
            f'<td class="n">{_opt(g.get("mem_used_mib_peak"), "{:,.0f}")} / '
            f"{_opt(g.get('mem_total_mib'), '{:,.0f}')}</td>"
            f'<td class="n">{_opt(g.get("power_w_mean"), "{:.0f} W")}</td>'
            f'<td class="n">{_opt(g.get("temp_c_max"), "{:.0f} °C")}</td></tr>'
            for i, g in d["per_gpu"].items()
        )
        peak_rows = "".join(
            f'<tr><td>{escape(str(k))}</td><td class="n">{_opt(v, "{:,.0f} MiB")}</td></tr>'
            for k, v in peak.items()
        )
        body = (
            '<table><tr><th>GPU</th><th>name</th><th class="n">util mean</th><th class="n">util max</th>'
            f'<th class="n">memory peak / total (MiB)</th><th class="n">power</th>'
            f'<th class="n">temp max</th></tr>'
            f"{rows}</table>"
        )
        if peak_rows:
            body += (
                '<table style="margin-top:10px;width:auto"><tr><th>device</th>'
                f'<th class="n">torch peak allocated (sum of its workers)</th></tr>{peak_rows}</table>'
            )
        parts.append(_section("GPUs", body))

    # -- stages and workers ----------------------------------------------------------------------
    stages = _stages(stats)
    row = []
    if stages:
        tot = sum(stages.values()) or 1.0
        items = [(k, v, f"{svg.fmt_seconds(v)}  ({100 * v / tot:.1f}%)") for k, v in stages.items()]
        body = svg.stacked_bar(list(stages.items()), width=520) + svg.bar_chart(
            items, width=520, colors=[svg.color(i) for i in range(len(items))]
        )
        note = "seconds summed over workers; stages overlap in time"
        waits = _stages(stats, waits=True)
        if waits:
            said = {
                "wait_input": "the networks for decoded images",
                "wait_writers": "the networks for the file writers",
                "slot_wait": "the decoder for a free slot",
            }
            told = (f"{said.get(k, k)} {svg.fmt_seconds(v)}" for k, v in waits.items())
            note += "; waited: " + ", ".join(told)
        ms = d.get("batch_stages_ms") or {}
        if ms:
            note += ". Per batch in the steady state (median ms): " + ", ".join(
                f"{k.replace('_', ' ')} {v:.1f}" for k, v in ms.items()
            )
            if d.get("bound"):
                note += f". Bound: {d['bound']}"
        row.append(_section("Time per stage", body, note))
    workers = d["per_worker"]
    if workers:
        wi = [
            (
                _wlabel(w),
                float(w["images"]),
                f"{w['images']:,} img · {w['units']:,} units"
                + (f" · {svg.fmt_num(w['images_per_s'])}/s" if w.get("images_per_s") else ""),
            )
            for w in workers
        ]
        body = svg.bar_chart(wi, width=520, colors=[svg.color(i) for i in range(len(wi))])
        bf = [w for w in workers if w.get("busy_fraction") is not None]
        if bf:
            body += "<div style='height:8px'></div>" + svg.bar_chart(
                [(_wlabel(w), 100 * w["busy_fraction"], f"{100 * w['busy_fraction']:.0f}% busy") for w in bf],
                width=520,
                colors=["#9ca3af"],
            )
        row.append(_section("Work per worker", body, "images (bar) and units of work claimed"))
    if row:
        parts.append(f'<div class="grid2">{"".join(row)}</div>')

    # -- totals and failures --------------------------------------------------------------------
    trows = "".join(
        f'<tr><td>{escape(k.replace("_", " "))}</td><td class="n">{_fmt_val(v)}</td></tr>'
        for k, v in totals.items()
        if not isinstance(v, (dict, list))
    )
    lat_rows = "".join(
        f'<tr><td>batch latency {escape(k)}</td><td class="n">'
        f"{_int(v) if k == 'n' else svg.fmt_seconds(v)}</td></tr>"
        for k, v in lat.items()
    )
    side = [_section("Totals", f'<table style="width:auto;min-width:60%">{trows}{lat_rows}</table>')]
    reasons = totals.get("failed_by_reason") or stats.get("failed_by_reason") or {}
    examples = stats.get("failures") or stats.get("failure_examples") or []
    if reasons or examples:
        by: dict[str, list[dict[str, Any]]] = {}
        for e in examples:
            if isinstance(e, dict):
                by.setdefault(str(e.get("reason", "error")), []).append(e)
        keys = list(reasons) + [k for k in by if k not in reasons]
        frows = []
        for k in sorted(keys, key=lambda r: -_num(reasons.get(r, len(by.get(r, []))))):
            ex = by.get(k, [])[:3]
            exs = "<br>".join(
                f"<code>{escape(str(e.get('source', '')))}</code>"
                + (f" — {escape(str(e.get('error'))[:160])}" if e.get("error") else "")
                for e in ex
            )
            frows.append(
                f'<tr><td><span class="reason">{escape(k)}</span></td>'
                f'<td class="n">{_int(reasons.get(k, len(by.get(k, []))))}</td><td>{exs}</td></tr>'
            )
        side.append(
            _section(
                "Failures by reason",
                '<table><tr><th>reason</th><th class="n">images</th>'
                f"<th>examples</th></tr>{''.join(frows)}</table>",
            )
        )
    else:
        side.append(_section("Failures by reason", "<p>No failures.</p>"))
    parts.append(f'<div class="grid2">{"".join(side)}</div>')

    parts.extend(_run_sections(stats))

    # -- configuration ------------------------------------------------------------------------
    cfg = stats.get("config") or stats.get("configuration") or {}
    if cfg:
        crows = "".join(
            f"<tr><td><code>{escape(k)}</code></td><td><code>{escape(_cfg_val(v))}</code></td></tr>"
            for k, v in _flatten(cfg)
        )
        parts.append(_section("Configuration", f"<table>{crows}</table>"))
    parts.append(
        "<footer>generated by facefleet · data: report.json, stats.json</footer></main></body></html>"
    )
    return "".join(parts)


def _run_sections(stats: dict[str, Any]) -> list[str]:
    """Sessions of the run (each start and resume), skipped inputs, manifest repairs."""
    out = []
    sessions = [x for x in stats.get("sessions") or [] if isinstance(x, dict)]
    if sessions:
        rows = "".join(
            f"<tr><td>{i + 1}</td><td>{escape(_when(x.get('start')))}</td>"
            f'<td class="n">{svg.fmt_seconds(_num(x.get("wall_seconds")))}</td>'
            f'<td class="n">{_int(x.get("images"))}</td><td class="n">{_int(x.get("failed"))}</td>'
            f'<td class="n">{_opt(x.get("images_per_s"), "{:,.1f}")}</td>'
            f"<td>{escape(str(x.get('status', '')))}</td></tr>"
            for i, x in enumerate(sessions)
        )
        body = (
            '<table><tr><th>#</th><th>started</th><th class="n">time</th><th class="n">images</th>'
            f'<th class="n">failed</th><th class="n">images / s</th><th>status</th></tr>{rows}</table>'
        )
        out.append(_section("Sessions", body, "each start or resume; the run's time is their sum"))
    skipped = stats.get("skipped_inputs") or {}
    if isinstance(skipped, dict) and _num(skipped.get("count")):
        reasons = ", ".join(
            f"{escape(str(k))} {_int(v)}" for k, v in (skipped.get("by_reason") or {}).items()
        )
        rows = "".join(
            f"<tr><td><code>{escape(str(e.get('source', '')))}</code></td>"
            f"<td>{escape(str(e.get('reason')))}</td></tr>"
            for e in skipped.get("examples") or []
            if isinstance(e, dict)
        )
        out.append(
            _section(
                "Skipped inputs",
                f"<table><tr><th>entry</th><th>reason</th></tr>{rows}</table>",
                f"{_int(skipped.get('count'))} listed entries were not read: {reasons}",
            )
        )
    repairs = stats.get("manifest_repairs") or {}
    if isinstance(repairs, dict) and (repairs.get("void_units") or repairs.get("moved")):
        moved = "".join(f"<li><code>{escape(str(m))}</code></li>" for m in repairs.get("moved") or [])
        out.append(
            _section(
                "Manifest repaired",
                f"<ul>{moved}</ul>",
                f"{len(repairs.get('void_units') or [])} unit file(s) were missing or damaged; their images "
                "were processed again; damaged or foreign files were moved aside",
            )
        )
    return out


def _wlabel(w: dict[str, Any]) -> str:
    dev = w.get("device")
    return f"{w['worker']} ({dev})" if dev and str(dev) != str(w["worker"]) else str(w["worker"])


def _opt(v: Any, fmt: str) -> str:
    return "–" if v is None else escape(fmt.format(float(v)))


def _fmt_val(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return escape(str(v))
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return escape(svg.fmt_num(v))
    return escape(str(v))


def _cfg_val(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, tuple, bool)) or v is None else str(v)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _atomic_write_text(path: Path, text: str) -> None:
    try:
        from facefleet.io.atomic import atomic_write_text
    except ImportError:  # pragma: no cover - the io package ships it; keep the report independent
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    atomic_write_text(path, text)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def write_report(out_dir: str | os.PathLike[str], stats: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/report.json`` atomically; returns (html, json).

    ``report.json`` = ``{"stats": stats, "derived": derive(stats)}``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"report: output {out} is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    derived = derive(stats)
    from facefleet.export.jsonfile import finite_json

    doc = finite_json(json.loads(json.dumps({"stats": stats, "derived": derived}, default=_json_default)))
    json_path, html_path = out / "report.json", out / "report.html"
    _atomic_write_text(json_path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    _atomic_write_text(html_path, render_html(stats, derived))
    return html_path, json_path
