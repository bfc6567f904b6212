"""The bench's printed tables: the rows of one call (engine, loop, LiteRT) and the scaling over GPUs."""

from __future__ import annotations

from typing import Any

__all__ = ["format_rows", "format_scaling", "format_table"]


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def format_rows(rows: list[dict[str, Any]]) -> str:
    loop = next(
        (r.get("images_per_s") for r in rows if r["name"].startswith("loop") and "error" not in r), None
    )
    lite = next(
        (r.get("images_per_s") for r in rows if r["name"].startswith("LiteRT") and "error" not in r), None
    )
    head = [
        "baseline",
        "device",
        "images",
        "img/s",
        "steady",
        "faces/s",
        "p50 ms",
        "p99 ms",
        "GPU MiB",
        "NVML MiB",
        "RSS MiB",
        "CPU ms/img",
        "x loop",
        "x LiteRT",
    ]
    out = []
    notes = []
    for r in rows:
        if "error" in r:
            out.append([r["name"], r["device"], "failed", *["-"] * 11])
            notes.append(f"{r['name']}: {r['error']}")
            continue
        ips = r.get("images_per_s")
        # the loop and LiteRT are timed after their warm-up, so compare with the engine's steady rate
        cmp = r.get("steady_images_per_s") or ips
        out.append(
            [
                r["name"],
                r["device"],
                f"{r['images']:,}",
                _f(ips, "{:,.1f}"),
                _f(r.get("steady_images_per_s"), "{:,.1f}"),
                _f(r.get("faces_per_s"), "{:,.1f}"),
                _f(None if r.get("batch_p50_s") is None else 1e3 * r["batch_p50_s"], "{:.1f}"),
                _f(None if r.get("batch_p99_s") is None else 1e3 * r["batch_p99_s"], "{:.1f}"),
                _f(r.get("peak_gpu_mib"), "{:,.0f}"),
                _f(r.get("nvml_gpu_mib"), "{:,.0f}"),
                _f(r.get("peak_rss_mib"), "{:,.0f}"),
                _f(r.get("cpu_ms_per_image"), "{:,.0f}"),
                _f(cmp / loop if cmp and loop else None, "{:.1f}x"),
                _f(cmp / lite if cmp and lite else None, "{:.2f}x"),
            ]
        )
    notes.append(
        "x loop / x LiteRT: steady img/s where measured (the baselines are timed after their warm-up); "
        "img/s includes the engine's start-up; every row does the same work per image (its model settings)"
    )
    notes.append(
        "CPU ms/img: CPU time of the whole call (start-up included: the engine's, the LiteRT pool's) per "
        "image, all processes; on a shared machine a steadier measure of the work than the rates"
    )
    notes.append(
        "GPU MiB: peak memory allocated (the engine: its busiest worker with its decoders); NVML MiB: what "
        "the run added to the busiest GPU's used memory by NVML's count (contexts and caches too)"
    )
    return "\n".join([format_table(head, out), *notes])


def format_scaling(rows: list[dict[str, Any]]) -> str:
    def rate(r: dict[str, Any]) -> float | None:  # steady state: start-up is a constant, not scaling
        return r.get("steady_images_per_s")

    base = next((rate(r) for r in rows if r.get("gpus") == 1 and rate(r)), None)
    out = []
    notes = []
    for r in rows:
        if "error" in r:
            out.append([str(r.get("gpus")), "-", "-", "-", "-"])
            notes.append(f"{r.get('gpus')} GPU(s): {r['error']}")
            continue
        ips = rate(r)
        if ips is None:
            notes.append(
                f"{r['gpus']} GPU(s): no steady rate: the workers never all ran at once between 10 % and "
                "90 % of the images (the first ones up did them before the last was ready); use more --images"
            )
        sp = ips / base if base and ips else None
        out.append(
            [
                str(r["gpus"]),
                _f(r.get("images_per_s"), "{:,.1f}"),
                _f(ips, "{:,.1f}"),
                _f(sp, "{:.2f}x"),
                _f(100 * sp / r["gpus"] if sp else None, "{:.1f}%"),
            ]
        )
    head = ["GPUs", "img/s (with start)", "steady img/s", "speedup", "efficiency"]
    return "\n".join([format_table(head, out), *notes])


def format_table(head: list[str], rows: list[list[str]]) -> str:
    """Plain-text table; first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep, *(line(r) for r in rows)])
