"""Where a GPU worker's time goes: decode, the device pipeline, and both overlapped, on one corpus.

Usage (GPU host, after ``. tools/device_setup.sh``)::

    python tools/profile_gpu.py --corpus DIR [--images 1024] [--batches 128,256] [--trace]

Prints one table per part; with ``--trace`` also the torch profiler's top operators for one batch
(host-bound or device-bound: compare the CPU total with the CUDA kernel total).
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from pathlib import Path

import torch

from facefleet.io.gpu_decode import decode_batch
from facefleet.pipeline import Reconstructor


def _sync() -> None:
    torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batches", default="128,256")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--trace", action="store_true")
    a = ap.parse_args()
    files = sorted(Path(a.corpus).rglob("*.jpg"))[: a.images]
    blobs = [f.read_bytes() for f in files]
    names = [str(f) for f in files]
    dev = torch.device("cuda:0")
    batches = [int(b) for b in a.batches.split(",")]
    print(
        f"{len(blobs)} files, {sum(map(len, blobs)) / len(blobs) / 1e3:.0f} KB mean,",
        torch.cuda.get_device_name(),
    )

    # 1. decode alone
    decode_batch(blobs[:8], names[:8], dev)
    _sync()
    for b in batches:
        t0 = time.perf_counter()
        for s in range(0, len(blobs), b):
            out = decode_batch(blobs[s : s + b], names[s : s + b], dev)
        _sync()
        dt = time.perf_counter() - t0
        bad = sum(not isinstance(o, torch.Tensor) or o.device.type != "cuda" for o in out)
        print(f"decode b{b}: {len(blobs) / dt:8.0f} img/s  (non-cuda outputs in last batch: {bad})")

    # 2. device pipeline alone on decoded batches
    rec = Reconstructor(device="cuda", precision=a.precision)
    t0 = time.perf_counter()
    rec.warmup()
    print(f"warmup: {time.perf_counter() - t0:.1f} s")
    for b in batches:
        imgs = [t for t in decode_batch(blobs[:b], names[:b], dev) if isinstance(t, torch.Tensor)]
        rec.reconstruct_tensors(imgs, names[:b])
        _sync()
        torch.cuda.reset_peak_memory_stats()
        reps = max(2, 1024 // b)
        t0 = time.perf_counter()
        for _ in range(reps):
            res = rec.reconstruct_tensors(imgs, names[:b])
        _sync()
        dt = (time.perf_counter() - t0) / reps
        timings: dict[str, float] = {}
        rec.reconstruct_tensors(imgs, names[:b], timings=timings)
        st = " ".join(f"{k}={v * 1e3:.1f}" for k, v in timings.items())
        faces = sum(len(r.faces) for r in res)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(
            f"pipeline b{b}: {b / dt:8.0f} img/s  {dt * 1e3:.1f} ms/batch  faces {faces}  peak {peak:.2f} GiB"
            f"  stages(ms, synced): {st}"
        )

    # 2b. pipeline alone on distinct pre-decoded batches (face counts, hence shapes, vary)
    for b in batches:
        pre = [
            torch.stack(
                [
                    t
                    for t in decode_batch(blobs[s : s + b], names[s : s + b], dev)
                    if isinstance(t, torch.Tensor)
                ]
            )
            for s in range(0, min(len(blobs), 8 * b), b)
        ]
        _sync()
        t0 = time.perf_counter()
        n = 0
        for x in pre:
            rec.reconstruct_tensors(x, names[: len(x)])
            n += len(x)
        _sync()
        dt = time.perf_counter() - t0
        print(f"pipeline distinct b{b}: {n / dt:8.0f} img/s over {len(pre)} batches (stacked input)")
        del pre

    # 3. decode thread -> device thread, as in the worker (decoding on the default stream, or its own)
    for own_stream in (False, True):
        for b in batches:
            q: queue.Queue = queue.Queue(maxsize=2)

            def producer(b: int = b, q: queue.Queue = q, own: bool = own_stream) -> None:
                stream = torch.cuda.Stream() if own else torch.cuda.current_stream()
                for s in range(0, len(blobs), b):
                    with torch.cuda.stream(stream):
                        out = decode_batch(blobs[s : s + b], names[s : s + b], dev)
                        x = torch.stack([t for t in out if isinstance(t, torch.Tensor)])
                        ev = torch.cuda.Event()
                        ev.record(stream)
                    q.put((x, ev))
                q.put(None)

            t0 = time.perf_counter()
            th = threading.Thread(target=producer)
            th.start()
            n = 0
            while (item := q.get()) is not None:
                x, ev = item
                torch.cuda.current_stream().wait_event(ev)
                x.record_stream(torch.cuda.current_stream())
                rec.reconstruct_tensors(x, names[: len(x)])
                n += len(x)
            _sync()
            th.join()
            dt = time.perf_counter() - t0
            print(
                f"decode||pipeline b{b} {'own stream' if own_stream else 'same stream'}: {n / dt:8.0f} img/s"
            )

    if a.trace:
        from torch.profiler import ProfilerActivity, profile

        b = batches[-1]
        imgs = [t for t in decode_batch(blobs[:b], names[:b], dev) if isinstance(t, torch.Tensor)]
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            decode_batch(blobs[:b], names[:b], dev)
            rec.reconstruct_tensors(imgs, names[:b])
            _sync()
        print(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60)
        )
        print(
            prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60)
        )


if __name__ == "__main__":
    main()
