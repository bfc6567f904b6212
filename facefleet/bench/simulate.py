"""CPU simulation of a multi-GPU run: is the scheduler (the engine's durable queue) ever the
bottleneck?

N worker processes stand in for N GPUs. Each claims units from the engine's real SQLite queue
(:func:`facefleet.engine.queue.open_queue`, a WAL file in a scratch directory), "processes" a
unit by sleeping ``images / rate`` seconds (the measured per-GPU rate), then completes it and
records progress exactly as an engine worker does, while a heartbeat thread renews its leases.
Measured: claim and complete latency, each worker's busy fraction (time in the simulated GPU
stage / wall time) and achieved vs ideal throughput (N x rate).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facefleet.bench.tables import format_table

__all__ = ["SimResult", "format_sim_table", "simulate_workers"]


@dataclass
class SimResult:
    workers: int
    rate_per_worker: float
    unit_size: int
    images: int
    units: int
    wall_s: float
    achieved_images_per_s: float
    ideal_images_per_s: float
    efficiency: float
    busy_fraction: list[float]
    units_per_worker: list[int]
    claim_ms: dict[str, float]
    complete_ms: dict[str, float]
    queue_ops_per_s: float
    per_worker: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _worker(idx: int, qpath: str, rate: float, lease_s: float, ready: Any, go: Any, out: Any) -> None:
    from facefleet.engine.queue import open_queue

    owner = f"sim{idx}-{os.getpid()}"
    q = open_queue(qpath)
    q.register_worker(owner, f"sim{idx}", f"sim:{idx}", os.getpid())
    held: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def beat() -> None:
        hq = open_queue(qpath)
        while not stop.wait(lease_s / 3):
            with lock:
                ids = list(held)
            hq.heartbeat(owner, ids, lease_s)
        hq.close()

    hb = threading.Thread(target=beat, daemon=True)
    hb.start()
    ready.put(idx)
    go.wait()
    t_start = time.perf_counter()
    claims: list[float] = []
    completes: list[float] = []
    busy = 0.0
    units = images = 0
    last_end = t_start
    while True:
        t0 = time.perf_counter()
        unit = q.claim(owner, lease_s, max_attempts=3)
        claims.append(time.perf_counter() - t0)
        if unit is None:
            if q.remaining() == 0:
                break
            time.sleep(0.002)
            continue
        with lock:
            held.add(unit.id)
        t1 = time.perf_counter()
        target = len(unit.paths) / rate
        time.sleep(target)  # the simulated GPU stage
        busy += time.perf_counter() - t1
        t2 = time.perf_counter()
        q.complete(unit.id, owner, {"images": len(unit.paths), "faces": len(unit.paths), "failed": 0})
        q.add_progress(owner, len(unit.paths), len(unit.paths), 0, target)
        completes.append(time.perf_counter() - t2)
        with lock:
            held.discard(unit.id)
        units += 1
        images += len(unit.paths)
        last_end = time.perf_counter()
    stop.set()
    q.close()
    out.put(
        {
            "worker": idx,
            "t_start": t_start,
            "t_last_end": last_end,
            "busy_s": busy,
            "units": units,
            "images": images,
            "claims": claims,
            "completes": completes,
            "wall_s": last_end - t_start,
        }
    )


def simulate_workers(
    n_workers: int,
    *,
    rate: float = 3000.0,
    seconds: float = 5.0,
    unit_size: int = 256,
    images: int | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    lease_s: float = 30.0,
) -> SimResult:
    """Run the simulation with ``n_workers`` processes, each at ``rate`` images/s, over enough
    images for about ``seconds`` of ideal wall time (or exactly ``images``)."""
    from facefleet.engine.queue import QUEUE_FILE, iter_units, open_queue

    if n_workers < 1 or rate <= 0:
        raise ValueError(f"simulate_workers: need n_workers >= 1 and rate > 0 (got {n_workers}, {rate})")
    n_img = int(images if images is not None else max(unit_size * n_workers, rate * n_workers * seconds))
    tmp = tempfile.TemporaryDirectory(prefix="facefleet-sim-", dir=work_dir)
    try:
        qpath = str(Path(tmp.name) / QUEUE_FILE)
        with open_queue(qpath) as q:
            n_units = q.add_units(iter_units((f"sim/{i:09d}.jpg" for i in range(n_img)), unit_size))
        from facefleet.bench.corpus import mp_context

        ctx = mp_context()
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [
            ctx.Process(target=_worker, args=(i, qpath, rate, lease_s, ready, go, out), daemon=True)
            for i in range(n_workers)
        ]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        go.set()
        results = [out.get(timeout=max(120.0, 20 * n_img / (rate * n_workers))) for _ in procs]
        for p in procs:
            p.join(timeout=30)
    finally:
        tmp.cleanup()
    results.sort(key=lambda r: r["worker"])
    t0 = min(r["t_start"] for r in results)
    t1 = max(r["t_last_end"] for r in results)
    wall = max(t1 - t0, 1e-9)
    claims = [c for r in results for c in r["claims"]]
    comps = [c for r in results for c in r["completes"]]
    done = sum(r["images"] for r in results)
    ideal = rate * n_workers
    achieved = done / wall

    def lat(xs: list[float]) -> dict[str, float]:
        return {
            "p50": 1e3 * _pct(xs, 50),
            "p99": 1e3 * _pct(xs, 99),
            "max": 1e3 * max(xs, default=0.0),
            "n": float(len(xs)),
        }

    return SimResult(
        workers=n_workers,
        rate_per_worker=rate,
        unit_size=unit_size,
        images=done,
        units=n_units,
        wall_s=wall,
        achieved_images_per_s=achieved,
        ideal_images_per_s=ideal,
        efficiency=achieved / ideal,
        busy_fraction=[r["busy_s"] / wall for r in results],
        units_per_worker=[r["units"] for r in results],
        claim_ms=lat(claims),
        complete_ms=lat(comps),
        queue_ops_per_s=(len(claims) + len(comps)) / wall,
        per_worker=[{k: r[k] for k in ("worker", "units", "images", "busy_s", "wall_s")} for r in results],
    )


def format_sim_table(results: list[SimResult]) -> str:
    """An aligned plain-text table of simulation results."""
    head = [
        "workers",
        "rate/worker",
        "ideal img/s",
        "achieved img/s",
        "efficiency",
        "busy min/mean",
        "claim p50/p99 ms",
        "complete p99 ms",
        "queue ops/s",
    ]
    rows = []
    for r in results:
        bf = r.busy_fraction
        rows.append(
            [
                str(r.workers),
                f"{r.rate_per_worker:,.0f}",
                f"{r.ideal_images_per_s:,.0f}",
                f"{r.achieved_images_per_s:,.0f}",
                f"{100 * r.efficiency:.1f}%",
                f"{100 * min(bf):.0f}% / {100 * sum(bf) / len(bf):.0f}%",
                f"{r.claim_ms['p50']:.2f} / {r.claim_ms['p99']:.2f}",
                f"{r.complete_ms['p99']:.2f}",
                f"{r.queue_ops_per_s:,.0f}",
            ]
        )
    return format_table(head, rows)
