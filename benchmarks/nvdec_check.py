"""Whether NVDEC decodes a video here, on the main thread and on THREADS reader threads at once (as a video
worker reads its chunks), and how fast: prints one line per case, with the error where it fails.

    python benchmarks/nvdec_check.py VIDEO [THREADS]
"""

from __future__ import annotations

import sys
import threading
import time

import torch

from facefleet.io.nvdec import read_frames_nvdec
from facefleet.io.video import plan_chunks, probe_video
from facefleet.sources.items import FrameRange


def main() -> None:
    path, threads = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8
    torch.zeros(1, device="cuda")  # the worker's CUDA context exists before its readers start
    try:
        t0 = time.perf_counter()
        n = sum(1 for _ in read_frames_nvdec(FrameRange(path, 0, 120), "cuda:0"))
        torch.cuda.synchronize()
        print(f"nvdec main thread: {n} frames, {n / (time.perf_counter() - t0):.0f} frames/s")
    except Exception as e:
        print(f"nvdec main thread FAILED: {type(e).__name__}: {e}")
    chunks = plan_chunks(probe_video(path), 120)[:threads]
    errors: list[str] = []
    counts: list[int] = []

    def read(c: FrameRange) -> None:
        try:
            counts.append(sum(1 for _ in read_frames_nvdec(c, "cuda:0")))
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")

    ts = [threading.Thread(target=read, args=(c,)) for c in chunks]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = sum(counts)
    print(f"nvdec {len(ts)} threads: {n} frames, {n / dt:.0f} frames/s, errors {errors[:2]}")


if __name__ == "__main__":
    main()
