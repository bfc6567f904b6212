"""The work queue's cost per unit: claim, heartbeat and complete latency for each backend.

Every worker process loops over the queue as an engine worker does (claim a unit, heartbeat its
lease once, complete it) with no work in between, so the figures are the queue's own cost; with
``--workers K`` the K processes contend for the queue at once. Prints a Markdown table: median and
95th percentile milliseconds per call, and the units per second the queue sustained.

    python benchmarks/queue_cost.py --units 2000 --workers 1,4
    python benchmarks/queue_cost.py --pg postgresql://user@db-host/facefleet   # a remote server

The SQLite queue is a file in ``--dir`` (default: a temporary folder); the PostgreSQL queue is a
scratch schema on ``--pg`` (default ``postgresql://postgres@127.0.0.1:5432/test``), dropped at the
end. ``--backends sqlite`` skips PostgreSQL.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from facefleet.engine.queue import enqueue_listing, open_queue

OPS = ("claim", "heartbeat", "complete")


@dataclass(frozen=True)
class Row:
    """One table row: a backend, a number of workers, one operation's latency (ms)."""

    backend: str
    workers: int
    op: str
    calls: int
    median_ms: float
    p95_ms: float
    units_per_s: float


def _worker(url: str, name: str, go: float, out: mp.Queue) -> None:
    q = open_queue(url)
    lat: dict[str, list[float]] = {op: [] for op in OPS}
    while time.time() < go:  # start together
        time.sleep(0.001)
    while True:
        t0 = time.perf_counter()
        u = q.claim(name, 60, 3)
        t1 = time.perf_counter()
        if u is None:
            break
        q.heartbeat(name, [u.id], 60)
        t2 = time.perf_counter()
        q.complete(u.id, name, {"images": len(u.items)})
        t3 = time.perf_counter()
        lat["claim"].append(t1 - t0)
        lat["heartbeat"].append(t2 - t1)
        lat["complete"].append(t3 - t2)
    q.close()
    out.put((lat, time.time()))


def measure(url: str, backend: str, units: int, unit_size: int, workers: int) -> list[Row]:
    """Fill the queue at ``url`` with ``units`` units, drain it with ``workers`` processes."""
    q = open_queue(url)
    q.reset()
    enqueue_listing(q, (f"/bench/{i:09d}.jpg" for i in range(units * unit_size)), unit_size)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    go = time.time() + 2.0 + 0.5 * workers  # after every process has started
    procs = [ctx.Process(target=_worker, args=(url, f"w{k}", go, out)) for k in range(workers)]
    for p in procs:
        p.start()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    results = [lat for lat, _ in got]
    wall = max(end for _, end in got) - go
    done = q.counts()["done"]["units"]
    q.close()
    if done != units:
        raise SystemExit(f"{backend}: {done} of {units} units done")
    rows = []
    for op in OPS:
        ms = sorted(1000 * x for r in results for x in r[op])
        p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
        rows.append(Row(backend, workers, op, len(ms), statistics.median(ms), p95, units / wall))
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [
        "| backend | workers | call | calls | median ms | p95 ms | units/s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.backend} | {r.workers} | {r.op} | {r.calls} | {r.median_ms:.3f} | {r.p95_ms:.3f} | "
            f"{r.units_per_s:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--units", type=int, default=2000, help="units per measurement (default 2000)")
    p.add_argument("--unit-size", type=int, default=256, help="items per unit (default 256)")
    p.add_argument("--workers", default="1,4", help="comma list of worker process counts (default 1,4)")
    p.add_argument("--backends", default="sqlite,postgres", help="comma list (default sqlite,postgres)")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL server URL")
    p.add_argument(
        "--dir", type=Path, default=None, help="folder for the SQLite file (default: a temp folder)"
    )
    args = p.parse_args(argv)
    workers = [int(x) for x in args.workers.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.units < 1 or args.unit_size < 1 or min(workers) < 1:
        p.error("--units, --unit-size and --workers must be >= 1")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for backend in backends:
            if backend == "sqlite":
                url = str(Path(tmp) / "_queue.sqlite")
            elif backend == "postgres":
                sep = "&" if "?" in args.pg else "?"
                url = f"{args.pg}{sep}schema=ff_bench_{uuid.uuid4().hex[:12]}"
            else:
                p.error(f"unknown backend {backend!r}")
            try:
                for k in workers:
                    rows += measure(url, backend, args.units, args.unit_size, k)
            finally:
                if backend == "postgres":
                    from facefleet.engine.queue.postgres import PostgresQueue

                    PostgresQueue(url).drop_schema()
    print(
        f"queue cost per unit: {args.units} units of {args.unit_size} items; {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
