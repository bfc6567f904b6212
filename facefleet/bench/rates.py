"""The bench's measures of a run: the steady rate from per-batch completions, percentiles, peak memory
(GPU and host) from the GPU sampler, and CPU time of a call with its child processes."""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["batch_points", "cpu_seconds", "nvml_added_mib", "percentile", "sampler_peaks", "steady_rate"]


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and by its children that have ended and
    been waited for (the engine's workers, the LiteRT pool): differences of it are a call's CPU cost, a
    figure that other jobs on a shared machine disturb far less than its rate."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def sampler_peaks(summ: dict[str, Any]) -> tuple[float | None, float | None]:
    """Peak GPU memory used (NVML, busiest GPU) and host RSS from a :meth:`GpuSampler.summary`."""
    gpu = [g["mem_used_mib_peak"] for g in summ["gpus"].values() if g.get("mem_used_mib_peak") is not None]
    return (max(gpu) if gpu else None), summ.get("rss_mib_peak")


def nvml_added_mib(summary: dict[str, Any]) -> float | None:
    """Device memory a run added on its busiest GPU by NVML's count (peak "used" minus the first
    sample's, taken before the workers started), from a :meth:`GpuSampler.summary`: what nvidia-smi
    shows the run's processes holding (CUDA contexts, caching allocators' free blocks, graph pools,
    workspaces), against the ``peak_gpu_mib`` the workers allocate. None without NVML."""
    added = [
        float(g["mem_used_mib_peak"]) - float(g["mem_used_mib_start"])
        for g in summary.get("gpus", {}).values()
        if g.get("mem_used_mib_peak") is not None and g.get("mem_used_mib_start") is not None
    ]
    return max(added) if added else None


def batch_points(done: Any) -> list[dict[str, Any]]:
    """The engine's batch completions ``[[t, images, worker], ...]`` as cumulative samples for
    :func:`steady_rate`: one per batch (the coordinator's own samples are a second apart, coarse
    for runs of a few seconds)."""
    pts: list[dict[str, Any]] = []
    total = 0.0
    for row in sorted(done or [], key=lambda r: float(r[0])):
        total += float(row[1])
        pts.append({"t": float(row[0]), "images": total, "worker": str(row[2]) if len(row) > 2 else ""})
    return pts


def steady_rate(
    throughput: list[dict[str, Any]], lo: float = 0.1, hi: float = 0.9, workers: int | None = None
) -> float | None:
    """Images/s while the run is in full swing: between the moments ``lo`` and ``hi`` of all images
    were done (interpolated in the engine's cumulative samples [{"t", "images"}, ...]). Start-up
    (model loading, warm-up) and the tail (the last units, when some workers already idle) are left
    out alike for 1 or N workers.

    Samples that name their worker (one per batch, :func:`batch_points`) also narrow the window to
    the time every worker was running: from the last worker's first batch to the first worker's last
    batch. Workers come up seconds apart (compilation on a busy host), and on a short run the first
    ones can do most of the images before the last one starts; a rate over that time is not N
    workers' rate. ``None`` when there is no such window (too few images for this many workers), or
    when fewer than ``workers`` (the run's worker count) did any batch at all."""
    pts = [(float(r["t"]), float(r["images"])) for r in throughput if "t" in r and "images" in r]
    if len(pts) < 3 or pts[-1][1] <= 0:
        return None
    total = pts[-1][1]

    def when(frac: float) -> float | None:
        goal = frac * total
        for (t0, n0), (t1, n1) in itertools.pairwise(pts):
            if n0 < goal <= n1:
                return t0 + (t1 - t0) * (goal - n0) / (n1 - n0)
        return None

    def done_at(t: float) -> float:  # images done at time t (interpolated)
        if t <= pts[0][0]:
            return pts[0][1]
        for (t0, n0), (t1, n1) in itertools.pairwise(pts):
            if t0 <= t <= t1:
                return n0 + (n1 - n0) * (t - t0) / (t1 - t0) if t1 > t0 else n1
        return total

    a, b = when(lo), when(hi)
    if a is None or b is None or b <= a:
        return None
    spans: dict[str, list[float]] = {}
    for r in throughput:
        if r.get("worker"):
            span = spans.setdefault(str(r["worker"]), [float(r["t"]), float(r["t"])])
            span[0], span[1] = min(span[0], float(r["t"])), max(span[1], float(r["t"]))
    if spans and workers is not None and len(spans) < workers:
        return None
    if len(spans) > 1:
        a = max(a, max(s[0] for s in spans.values()))
        b = min(b, min(s[1] for s in spans.values()))
        if b <= a:
            return None
    return (done_at(b) - done_at(a)) / (b - a)
