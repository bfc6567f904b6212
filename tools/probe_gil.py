"""What a GPU worker's other threads cost its device thread (GPU host).

Usage: python tools/probe_gil.py --corpus DIR [--reps 24]

1. GIL latency: a thread that sleeps 0.5 ms in a loop measures how long it then waits for the GIL,
   alone and beside each JPEG decoder decoding batches of 128 continuously on another thread (a C
   call that kept the GIL would show waits far beyond the 5 ms switch interval).
2. One batch of 128 frames through ``Reconstructor.reconstruct_tensors``: alone; beside a decoder
   thread paced like a worker's (one batch decoded per batch) for each decoder and chunk size; beside
   a decoder in another process; with the cyclic garbage collector's objects frozen.
3. The garbage collector: objects it tracks after the warm-up and what a full collection costs.

These are the measurements behind reading and decoding in a child process of each worker
(facefleet.engine.decode_proc; docs/benchmarks.md, seventh session).
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from facefleet.io.gpu_decode import decode_images, jpeg_decoder
from facefleet.pipeline import Reconstructor

# a decoder process: decodes batches of 128 over and over for argv[2] seconds once told to go on stdin,
# with nvImageCodec's backends argv[3] (tools/probe_lean_decode.py uses it too)
CHILD = r"""
import sys, time, torch
from pathlib import Path
from facefleet.io.gpu_decode import configure_nvimgcodec, decode_images
configure_nvimgcodec(sys.argv[3] if len(sys.argv) > 3 else "auto")
files = sorted(Path(sys.argv[1]).rglob("*.jpg"))[:1024]
blobs = [f.read_bytes() for f in files]; names = [str(f) for f in files]
dev = torch.device("cuda", 0); k = 0
decode_images(blobs[:128], names[:128], dev, stack=True, chunk=32); torch.cuda.synchronize()
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
while time.perf_counter() - t0 < float(sys.argv[2]):
    i = (k % (len(files) // 128)) * 128
    decode_images(blobs[i:i + 128], names[i:i + 128], dev, stack=True, chunk=32)
    torch.cuda.synchronize(); k += 1
print(f"{k * 128 / (time.perf_counter() - t0):.0f}", flush=True)
"""


def load_corpus(corpus: str, limit: int = 1024) -> tuple[list[Path], list[bytes], list[str]]:
    """The corpus's first ``limit`` JPEGs (sorted): paths, their bytes and their names."""
    files = sorted(Path(corpus).rglob("*.jpg"))[:limit]
    return files, [f.read_bytes() for f in files], [str(f) for f in files]


def warm_networks(blobs: list[bytes], names: list[str]) -> tuple[Reconstructor, torch.Tensor]:
    """The compiled fp16 pipeline, warmed up on the first 128 files, and those files decoded."""
    imgs = decode_images(blobs[:128], names[:128], "cuda", stack=True).stack
    assert imgs is not None, "the first 128 files are not all the same size"
    rec = Reconstructor(device="cuda", precision="fp16")
    rec.warmup()
    for _ in range(3):
        rec.reconstruct_tensors(imgs, names[:128])
    torch.cuda.synchronize()
    return rec, imgs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--reps", type=int, default=24)
    a = ap.parse_args()
    files, blobs, names = load_corpus(a.corpus)
    if len(files) < 256:
        sys.exit("need at least 256 JPEGs in the corpus")
    dev = torch.device("cuda", 0)
    decoders = [d for d in ("nvimgcodec", "nvjpeg") if jpeg_decoder(dev, d) is not None]
    batches = len(files) // 128

    def decode_loop(decoder: str, chunk: int, stop: threading.Event, go: threading.Semaphore | None) -> None:
        stream = torch.cuda.Stream(dev)
        k = 0
        with torch.cuda.stream(stream):
            while not stop.is_set():
                if go is not None and not go.acquire(timeout=0.05):
                    continue
                i = (k % batches) * 128
                decode_images(
                    blobs[i : i + 128], names[i : i + 128], dev, decoder=decoder, stack=True, chunk=chunk
                )
                stream.synchronize()
                k += 1

    print("1. GIL latency of a thread sleeping 0.5 ms in a loop (4 s each)")
    for decoder in [None, *decoders]:
        stop = threading.Event()
        lat: list[float] = []

        def ticker(stop: threading.Event = stop, lat: list[float] = lat) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                time.sleep(0.0005)
                lat.append(time.perf_counter() - t0 - 0.0005)

        threads = [threading.Thread(target=ticker)]
        if decoder is not None:
            threads.append(threading.Thread(target=decode_loop, args=(decoder, 32, stop, None)))
        for t in threads:
            t.start()
        time.sleep(4)
        stop.set()
        for t in threads:
            t.join()
        lat.sort()
        waits = sum(x for x in lat if x > 0.002) / 4
        label = "alone" if decoder is None else decoder + " decoding beside it"
        p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
        print(
            f"  {label:36s} p50 {p50:5.2f} p99 {p99:5.2f} max {lat[-1] * 1e3:5.2f} ms; "
            f"waits > 2 ms {waits:.1%} of the time"
        )

    rec, imgs = warm_networks(blobs, names)

    def batch_ms(go: threading.Semaphore | None = None) -> float:
        t0 = time.perf_counter()
        for _ in range(a.reps):
            if go is not None:
                go.release()
            rec.reconstruct_tensors(imgs, names[:128])
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / a.reps * 1e3

    print("2. one batch of 128 frames (ms)")
    print(f"  {'alone':52s} {batch_ms():6.1f}")
    for decoder in decoders:
        for chunk in (32, 128):
            stop, go = threading.Event(), threading.Semaphore(0)
            t = threading.Thread(target=decode_loop, args=(decoder, chunk, stop, go))
            t.start()
            ms = batch_ms(go)
            stop.set()
            t.join()
            print(f"  {f'beside a {decoder} thread, chunks of {chunk}, one batch per batch':52s} {ms:6.1f}")
    cmd = [sys.executable, "-c", CHILD, a.corpus, "15"]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None and child.stdout.readline().strip() == "ready"
    child.stdin.write("go\n")
    child.stdin.flush()
    time.sleep(1)
    ms = batch_ms()
    rate = child.stdout.read().strip()
    child.wait()
    print(f"  {f'beside a decoder in another process ({rate} img/s)':52s} {ms:6.1f}")

    print("3. garbage collector")
    tracked = len(gc.get_objects())
    t0 = time.perf_counter()
    gc.collect()
    full = (time.perf_counter() - t0) * 1e3
    gc.freeze()
    print(f"  {tracked:,} objects tracked after the warm-up; a full collection {full:.0f} ms")
    print(f"  {'alone, objects frozen':52s} {batch_ms():6.1f}")


if __name__ == "__main__":
    main()
