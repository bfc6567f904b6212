"""The run report's HTML page (:func:`render_html`): headline cards, throughput, GPU and host plots,
stages, workers, totals, failures, the run's sessions, skipped inputs and configuration. Inline CSS
and SVG only (no scripts, fonts or links to fetch). The figures come from
:func:`facefleet.monitor.report.derive`."""

from __future__ import annotations

import datetime as _dt
import json
from html import escape
from typing import Any

from facefleet.monitor import svg
from facefleet.monitor.report import _gpu, _num, _stages, _throughput, derive

__all__ = ["render_html"]


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
