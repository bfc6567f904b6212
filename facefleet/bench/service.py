"""Load benchmark of ``facefleet serve``: ``python -m facefleet.bench.service``.

Starts a server (``facefleet serve --no-auth`` on 127.0.0.1, this host's devices), then for each number of
clients runs that many closed-loop clients for ``--seconds``: each sends ``POST /v1/reconstruct`` with a
JPEG of the corpus, waits for the JSON, sends the next (keep-alive connections, one per client, spread
over client processes so the load generator is not the bottleneck). Prints a table: clients, images/s,
latency p50/p90/p99, errors, the server's RSS before and after, the server's CPU milliseconds per image
(all its threads: HTTP, batching, decode and network launches); and, with ``--baseline-run``, the same
images through ``facefleet run`` (the batch engine) in the same call, after the server has stopped.
``--max-rss-growth-mib`` makes it a check (exit 1 on any error, or when the server's RSS after the last
row exceeds that after the first by more): the bounded load test CI runs at a small scale
(tests/test_service_load.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np


def _client_thread(port: int, blobs: list[bytes], start: float, stop: float, out: list[Any], k: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = k
    while time.time() < start:
        time.sleep(0.001)
    while time.time() < stop:
        body = blobs[i % len(blobs)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/reconstruct", body=body, headers={"Content-Type": "image/jpeg"})
            r = conn.getresponse()
            data = r.read()
            ok = r.status == 200 and data[:1] == b"{"
            out.append((time.perf_counter() - t0, r.status if not ok else 200))
        except (OSError, http.client.HTTPException) as e:
            out.append((time.perf_counter() - t0, f"{type(e).__name__}"))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.close()


def _client_proc(
    port: int, files: list[str], threads: int, start: float, stop: float, offset: int
) -> list[Any]:
    blobs = [Path(f).read_bytes() for f in files]
    outs: list[list[Any]] = [[] for _ in range(threads)]
    ts = [
        threading.Thread(target=_client_thread, args=(port, blobs, start, stop, outs[t], offset + t * 7))
        for t in range(threads)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return [x for o in outs for x in o]


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (0 where /proc is not there)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_load(
    port: int, files: list[str], clients: int, seconds: float, procs: int, server_pid: int | None = None
) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``seconds``; latencies and errors, and with ``server_pid``
    the server's CPU milliseconds per answered request (``server_cpu_ms``)."""
    cpu = _cpu_s(server_pid) if server_pid is not None else 0.0
    procs = max(1, min(procs, clients))
    per = [clients // procs + (1 if p < clients % procs else 0) for p in range(procs)]
    start = time.time() + 1.0  # every client process up and connected first
    stop = start + seconds
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        parts = pool.starmap(
            _client_proc, [(port, files, n, start, stop, 1000 * p) for p, n in enumerate(per)]
        )
    got = [x for part in parts for x in part]
    lat = np.array([t for t, s in got if s == 200]) * 1000
    errors: dict[str, int] = {}
    for _, s in got:
        if s != 200:
            errors[str(s)] = errors.get(str(s), 0) + 1
    q = np.percentile(lat, [50, 90, 99]) if len(lat) else [float("nan")] * 3
    row: dict[str, Any] = {
        "clients": clients,
        "requests": len(got),
        "images_per_s": len(lat) / seconds,
        "p50_ms": float(q[0]),
        "p90_ms": float(q[1]),
        "p99_ms": float(q[2]),
        "errors": errors,
    }
    if server_pid is not None:
        row["server_cpu_ms"] = (_cpu_s(server_pid) - cpu) * 1000 / max(1, len(lat))
    return row


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready after {timeout} s")


def _corpus(args: argparse.Namespace, work: Path) -> list[str]:
    if args.images_dir:
        files = sorted(str(p) for p in Path(args.images_dir).rglob("*.jpg"))
    else:
        from facefleet.bench.corpus import make_corpus, make_photo_corpus, photo_files

        out = work / "corpus"
        if photo_files():
            make_photo_corpus(out, args.images)
        else:
            make_corpus(out, args.images)
        files = sorted(str(p) for p in out.rglob("*.jpg"))
    if not files:
        raise SystemExit("no JPEG images for the load")
    return files[: args.images]


def _baseline_run(files: list[str], work: Path, serve_args: list[str]) -> dict[str, Any]:
    """The same images through ``facefleet run`` (JSON files, as the service answers)."""
    listing = work / "images.txt"
    listing.write_text("\n".join(files) + "\n")
    devices = [a for i, a in enumerate(serve_args) if i and serve_args[i - 1] in ("--devices", "--device")]
    cmd = [
        sys.executable,
        "-m",
        "facefleet",
        "run",
        str(listing),
        "-o",
        str(work / "run-out"),
        "--formats",
        "json",
        "--quiet",
        *(["--devices", devices[0]] if devices else []),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    from facefleet.bench.rates import batch_points, steady_rate

    stats = json.loads((work / "run-out" / "stats.json").read_text())
    steady = steady_rate(batch_points(stats.get("batch_done")) or stats.get("throughput", []))
    return {"images": len(files), "wall_s": wall, "images_per_s_wall": len(files) / wall, "steady": steady}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m facefleet.bench.service", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--clients", default="1,4,16,64,256", help="client counts, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of load per client count")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load at the most clients first")
    p.add_argument("--images", type=int, default=256, help="distinct images the clients send (the corpus)")
    p.add_argument("--images-dir", default=None, help="send these JPEGs instead of making a corpus")
    p.add_argument("--client-procs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--baseline-run", action="store_true", help="also time facefleet run on the same images")
    p.add_argument(
        "--max-rss-growth-mib", type=float, default=None, help="check: fail on errors or RSS growth"
    )
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument(
        "serve_args", nargs="*", help="after --: arguments of facefleet serve (e.g. --devices cpu)"
    )
    args = p.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="ff-bench-service-") as tmp:
        work = Path(tmp)
        files = _corpus(args, work)
        port = _free_port()
        cmd = [
            sys.executable,
            "-m",
            "facefleet",
            "serve",
            "--no-auth",
            "--no-ui",
            "--port",
            str(port),
            "--data-dir",
            str(work / "state"),
            "--log-level",
            "warning",
            *args.serve_args,
        ]
        server = subprocess.Popen(cmd)
        rows: list[dict[str, Any]] = []
        try:
            ready_s = _wait_ready(port, server, 900)
            # warm-up at the largest load: the batch sizes it makes, their buffers and plans, exist before
            # the first row (so RSS growth between rows is what the load leaks, not what it warms)
            run_load(port, files, max(counts), args.warmup, args.client_procs)
            for n in counts:
                before = _rss_mib(server.pid)
                row = run_load(port, files, n, args.seconds, args.client_procs, server.pid)
                row.update(rss_before_mib=before, rss_after_mib=_rss_mib(server.pid))
                rows.append(row)
                print(_line(row), flush=True)
        finally:
            server.terminate()
            server.wait(60)
        # after the server (which has the GPU to itself meanwhile), on the compile cache it warmed
        baseline = _baseline_run(files, work, args.serve_args) if args.baseline_run else None
    _table(rows, baseline, ready_s, len(files))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "baseline": baseline, "ready_s": ready_s}, indent=2)
        )
    if args.max_rss_growth_mib is not None:
        errors = sum(sum(r["errors"].values()) for r in rows)
        # after the last row minus after the first: what the load keeps, once the first row has grown the
        # allocator's per-thread arenas (with one row: that row's own growth)
        growth = rows[-1]["rss_after_mib"] - (
            rows[0]["rss_after_mib"] if len(rows) > 1 else rows[0]["rss_before_mib"]
        )
        if errors or growth > args.max_rss_growth_mib:
            print(f"FAILED: {errors} errors, server RSS grew {growth:.0f} MiB", file=sys.stderr)
            return 1
    return 0


def _line(r: dict[str, Any]) -> str:
    errs = sum(r["errors"].values())
    lat = f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f}"
    rss = f"{r['rss_before_mib']:,.0f} -> {r['rss_after_mib']:,.0f}"
    cpu = f"{r['server_cpu_ms']:.2f}"
    return f"| {r['clients']} | {r['images_per_s']:,.1f} | {lat} | {errs} | {rss} | {cpu} |"


def _table(rows: list[dict[str, Any]], baseline: dict[str, Any] | None, ready_s: float, n: int) -> None:
    print(f"\nfacefleet serve, POST /v1/reconstruct, {n} distinct JPEGs, server ready after {ready_s:.1f} s")
    print(
        "| clients | images/s | p50 ms | p90 ms | p99 ms | errors | server RSS MiB | server CPU ms / image |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(_line(r))
    if baseline:
        b = baseline
        print(
            f"\nfacefleet run, same {b['images']} images (JSON files): {b['wall_s']:.1f} s whole command "
            f"({b['images_per_s_wall']:,.1f} img/s with start-up), "
            + (f"{b['steady']:,.1f} img/s steady" if b["steady"] else "too short for a steady rate")
        )


if __name__ == "__main__":
    sys.exit(main())
