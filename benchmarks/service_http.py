"""What ``facefleet serve`` costs per request outside the networks: the HTTP layer (uvicorn, FastAPI,
auth, limits, the image header check, the batcher's queue and futures, the JSON answer) with the batch
step replaced by a stand-in that answers each request with a real result computed once at start (no
decode, no networks). Prints images/s, latency and the server process's CPU milliseconds per request
(user + system, all its threads, from /proc): on a GPU host those milliseconds, not the GPU, cap one
server process at ``1000 / ms`` requests per second of one core's Python.

    python benchmarks/service_http.py [--clients 1,8,32] [--seconds 5] [--client-procs 2] [--profile FILE]

``--profile FILE`` runs the server under cProfile and writes its stats (``python -m pstats FILE``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any


def serve(port: int, image: str, data_dir: str, profile: str | None) -> None:
    """The server, in this process: the real app, the batch step answered from one real result."""
    import numpy as np
    import uvicorn
    from PIL import Image

    from facefleet.config import JobConfig
    from facefleet.config.service import ServiceConfig
    from facefleet.entrypoints.service import batcher as batcher_mod
    from facefleet.entrypoints.service.app import create_app
    from facefleet.entrypoints.service.core import Service
    from facefleet.pipeline import Reconstructor

    rgb = np.asarray(Image.open(image).convert("RGB"))
    result = Reconstructor(device="cpu")([rgb], sources=[image])[0]  # real: faces, landmarks, pose

    def answer(self: Any, batch: list[Any]) -> None:
        t0 = time.perf_counter()
        for r in batch:
            f: Future[Any] = r.future
            f.set_result(batcher_mod.Reply(dataclasses.replace(result, source=r.source)))
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - t0)

    batcher_mod.DynamicBatcher._run = answer  # type: ignore[method-assign]
    cfg = JobConfig(devices="cpu", service=ServiceConfig(data_dir=data_dir, auth=False, ui=False))
    app = create_app(Service(cfg, gpu_metrics=False))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    if profile is None:
        uvicorn.Server(config).run()
        return
    import cProfile
    import signal

    prof = cProfile.Profile()
    signal.signal(signal.SIGTERM, lambda *_: (prof.disable(), prof.dump_stats(profile), os._exit(0)))
    prof.enable()
    uvicorn.Server(config).run()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--image", default=None, help="a JPEG the clients send (default: a 1080p corpus photo)")
    p.add_argument("--profile", default=None)
    p.add_argument("--serve", nargs=3, metavar=("PORT", "IMAGE", "DATA_DIR"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        serve(int(a.serve[0]), a.serve[1], a.serve[2], a.profile)
        return 0
    from facefleet.bench.service import _free_port, _wait_ready, run_load

    with tempfile.TemporaryDirectory(prefix="ff-http-") as tmp:
        image = a.image
        if image is None:
            from facefleet.bench.corpus import make_corpus, make_photo_corpus, photo_files

            (make_photo_corpus if photo_files() else make_corpus)(Path(tmp) / "c", 1)
            image = str(next((Path(tmp) / "c").rglob("*.jpg")))
        port = _free_port()
        cmd = [sys.executable, __file__, "--serve", str(port), image, str(Path(tmp) / "state")]
        server = subprocess.Popen(cmd + (["--profile", a.profile] if a.profile else []))
        try:
            _wait_ready(port, server, 300)
            run_load(port, [image], 8, 1.0, a.client_procs)  # warm
            size = Path(image).stat().st_size / 1024
            print(f"HTTP layer alone, {size:.0f} KiB JPEG per request, the server on 1 process:")
            print("| clients | requests/s | p50 ms | p99 ms | errors | server CPU ms / request |")
            print("|---:|---:|---:|---:|---:|---:|")
            for n in [int(c) for c in a.clients.split(",")]:
                row = run_load(port, [image], n, a.seconds, a.client_procs, server.pid)
                errors = sum(row["errors"].values())
                print(
                    f"| {n} | {row['images_per_s']:,.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
                    f"| {errors} | {row['server_cpu_ms']:.2f} |",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
