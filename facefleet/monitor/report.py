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

import math
from typing import Any

__all__ = ["bound_verdict", "derive", "steady_batch_stages"]

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
