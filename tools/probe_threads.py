"""Networks' threads in one process: the same results, and how many batches per second, with one
thread and with several (each on a CUDA stream of its own), on decoded batches (no decoder).

Usage (GPU host): python tools/probe_threads.py --corpus DIR [--batches 4] [--threads 1,2,3] [--reps 6]

The corpus's first ``batches * 128`` JPEGs are decoded once; the compiled fp16 pipeline reconstructs
each batch alone (the reference), then again alone (same process: is it deterministic?), then with
``k`` threads each taking batches in turn. Prints the largest landmark difference per face against the
reference, and images/s for each thread count (``reps`` passes over the batches).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe_gil import load_corpus

from facefleet.io.gpu_decode import decode_images
from facefleet.pipeline import Reconstructor


def landmarks(results: list) -> list[np.ndarray]:  # type: ignore[type-arg]
    return [f.landmarks for r in results for f in r.faces]


Batches = list[tuple[torch.Tensor, list[str]]]


def run_threads(rec: Reconstructor, batches: Batches, k: int, reps: int) -> tuple[float, list[list]]:  # type: ignore[type-arg]
    """``reps`` passes over ``batches`` by ``k`` threads taking the next batch in turn: (seconds, the
    last pass's results per batch)."""
    todo = [(r, b) for r in range(reps) for b in range(len(batches))]
    out: list[list] = [[] for _ in batches]  # type: ignore[type-arg]
    lock = threading.Lock()

    cuda = rec.device.type == "cuda"

    def work() -> None:
        with torch.cuda.stream(torch.cuda.Stream()) if cuda else contextlib.nullcontext():
            while True:
                with lock:
                    if not todo:
                        return
                    r, b = todo.pop(0)
                res = rec.reconstruct_tensors(*batches[b])
                if r == reps - 1:
                    out[b] = res

    ts = [threading.Thread(target=work) for _ in range(k)]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    sync()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--threads", default="1,2,3")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--device", default="cuda", help="cpu: a check of the probe itself (torch runtime)")
    a = ap.parse_args()
    _, blobs, names = load_corpus(a.corpus, 128 * a.batches)
    batches = []
    for s in range(0, len(blobs), 128):
        got = decode_images(blobs[s : s + 128], names[s : s + 128], a.device, stack=True)
        assert got.stack is not None, "the batch's images are not all the same size"
        batches.append((got.stack, names[s : s + 128]))
    cuda = a.device.startswith("cuda")
    rec = Reconstructor(device=a.device, precision="fp16" if cuda else "fp32", runtime="torch")
    rec.warmup()
    ref = [landmarks(rec.reconstruct_tensors(*b)) for b in batches]
    where = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{len(batches)} batches of 128, {sum(len(r) for r in ref)} faces, {where}")
    for k in [1, *(int(v) for v in a.threads.split(","))]:  # 1 first: the warm-up of the passes
        secs, out = run_threads(rec, batches, k, a.reps)
        diffs = []
        for want, got in zip(ref, out, strict=True):
            lm = landmarks(got)
            if len(lm) != len(want):
                diffs.append(np.inf)
                continue
            diffs += [float(np.abs(x - y).max()) for x, y in zip(lm, want, strict=True)]
        d = np.array(diffs)
        rate = a.reps * 128 * len(batches) / secs
        differ = f"faces differing {int((d > 0).sum())} of {len(d)}"
        print(f"threads {k}: {rate:7,.0f} img/s; landmarks against the first pass: median "
              f"{np.median(d):.3f}, max {d.max():.3f} px, {differ}")  # fmt: skip


if __name__ == "__main__":
    main()
