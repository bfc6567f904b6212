"""Which GPU JPEG decoder, and how many images per call? (GPU host)

Usage: python tools/probe_decode.py --corpus DIR [--images 1024] [--batch 128] [--chunks 16,32,128] [--steps]
       [--backends 'auto;hw;hw:0.85,cpu' --cpu-threads 4,12]

Decodes the same JPEG bytes (held in memory) through ``facefleet.io.gpu_decode.decode_images`` as a
worker does (batches of ``--batch`` stacked into one tensor, ``chunk`` images per decoder call), with
each GPU decoder available here (torchvision's nvJPEG; nvImageCodec when ``nvidia-nvimgcodec`` is
installed). Prints images/s with one thread and with two (two decoder threads or two workers per
GPU), the decoder's own buffer memory, and the pixel difference against Pillow (libjpeg-turbo).

``--steps``: where one batch's time goes on the decoder thread with nvImageCodec (header parsing,
nvImageCodec's per-file objects, the decode calls alone in chunks, ``decode_images`` as a whole).

``--backends``: nvImageCodec alone with each backend setting (``[gpu] decode_backends``: the JPEG engine,
CUDA, the host's cores, in shares) and host thread count (``[gpu] decode_cpu_threads``).
"""

from __future__ import annotations

import argparse
import functools
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from facefleet.io.gpu_decode import decode_images, decoder_memory_bytes, jpeg_decoder


def rate(blobs: list[bytes], batch: int, threads: int, decoder: str, chunk: int) -> float:
    names = [f"{i}.jpg" for i in range(len(blobs))]
    chunks = [(blobs[i : i + batch], names[i : i + batch]) for i in range(0, len(blobs), batch)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                decode_images(*chunks[0], "cuda", decoder=decoder, stack=True, chunk=chunk)  # warm-up
                s.synchronize()
                start.wait()
                for b, n in chunks[k::threads]:
                    decode_images(b, n, "cuda", decoder=decoder, stack=True, chunk=chunk)
                s.synchronize()
        except BaseException as e:
            errors.append(e)

    start = threading.Barrier(threads + 1)
    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    torch.cuda.synchronize()
    if errors:
        raise errors[0]
    return len(blobs) / (time.perf_counter() - t0)


def steps(blobs: list[bytes], batch: int, chunks: list[int]) -> None:
    """Milliseconds per batch of each step of nvImageCodec decoding on one thread."""
    from facefleet.io.jpeg import parse_jpeg_header

    dec = jpeg_decoder("cuda", "nvimgcodec")
    if dec is None:
        print("--steps: nvImageCodec not available here")
        return
    nv = dec._nv  # type: ignore[attr-defined]
    state = dec._state(torch.device("cuda", torch.cuda.current_device()))  # type: ignore[attr-defined]
    stream = torch.cuda.current_stream()
    part = blobs[:batch]
    buf = torch.empty((len(part), 3, *decode_images(part[:1], ["0"], "cuda").items[0].shape[1:]),
                      dtype=torch.uint8, device="cuda")  # fmt: skip

    def timed(label: str, fn: Any, reps: int = 3) -> None:
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        print(f"{label:58s} {(time.perf_counter() - t0) / reps * 1e3:8.2f} ms per {len(part)} files")

    timed("JPEG headers (facefleet.io.jpeg)", lambda: [parse_jpeg_header(b) for b in part])
    timed("nvImageCodec CodeStream per file", lambda: [nv.CodeStream(b) for b in part])
    rows = range(len(part))
    timed("nvImageCodec as_image per row of the batch", lambda: [nv.as_image(buf[i]) for i in rows])
    srcs = [nv.CodeStream(b) for b in part]
    images = [nv.as_image(buf[i]) for i in rows]
    names = [f"{i}.jpg" for i in rows]

    def calls(c: int) -> None:
        for s in range(0, len(part), c):
            kw = {"params": dec._params, "cuda_stream": stream.cuda_stream}  # type: ignore[attr-defined]
            state.decoder.decode(srcs[s : s + c], images=images[s : s + c], **kw)

    for c in chunks:
        timed(f"decode calls alone, {c} files per call", lambda c=c: calls(c))
        whole = functools.partial(decode_images, part, names, "cuda", stack=True, chunk=c)
        timed(f"decode_images, chunk {c}", whole)


def difference(blobs: list[bytes], pil: list[np.ndarray], name: str) -> tuple[float, int]:
    """Mean and largest pixel difference of the first files against Pillow."""
    got = decode_images(blobs[: len(pil)], [str(i) for i in range(len(pil))], "cuda", decoder=name).items
    diffs = [
        np.abs(t.permute(1, 2, 0).cpu().numpy().astype(int) - p.astype(int))
        for t, p in zip(got, pil, strict=True)
        if isinstance(t, torch.Tensor)
    ]
    if len(diffs) < len(pil):
        raise RuntimeError(f"{len(pil) - len(diffs)} of {len(pil)} files failed to decode")
    return float(np.mean([d.mean() for d in diffs])), int(max(d.max() for d in diffs))


def backends(blobs: list[bytes], pil: list[np.ndarray], a: Any) -> None:
    """nvImageCodec with each backend setting and host thread count: img/s on one thread, per chunk."""
    from facefleet.io.gpu_decode import configure_nvimgcodec

    print(f"{'backends':24s} {'threads':>7s} {'chunk':>6s} {'img/s':>7s} {'mean|d|':>8s} {'max|d|':>7s}")
    for spec in a.backends.split(";"):
        for threads in (int(t) for t in a.cpu_threads.split(",")):
            try:
                configure_nvimgcodec(spec, threads)
                if jpeg_decoder("cuda", "nvimgcodec") is None:
                    print(f"{spec:24s} {threads:7d} not usable (see the warning above)")
                    continue
                mean, mx = difference(blobs, pil, "nvimgcodec")
                for chunk in (int(c) for c in a.chunks.split(",")):
                    r = rate(blobs, a.batch, 1, "nvimgcodec", chunk)
                    print(f"{spec:24s} {threads:7d} {chunk:6d} {r:7.0f} {mean:8.3f} {mx:7d}")
            except Exception as e:
                print(f"{spec:24s} {threads:7d} failed: {type(e).__name__}: {e}")
    configure_nvimgcodec()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--chunks", default="16,32,128")
    ap.add_argument("--steps", action="store_true", help="time the steps of one nvImageCodec batch")
    ap.add_argument(
        "--backends",
        default="",
        help="nvImageCodec backend settings to compare, ';'-separated (e.g. 'auto;hw;hw:0.85,cpu'), "
        "each with every --cpu-threads",
    )
    ap.add_argument("--cpu-threads", default="4", help="nvImageCodec host threads, e.g. 4,12 (--backends)")
    a = ap.parse_args()
    files = sorted(Path(a.corpus).rglob("*.jpg"))[: a.images]
    blobs = [f.read_bytes() for f in files]
    mb = sum(map(len, blobs)) / len(blobs) / 1e6
    print(f"{len(blobs)} JPEGs, {mb:.2f} MB each on average, batch {a.batch}, {torch.cuda.get_device_name()}")
    if a.steps:
        steps(blobs, a.batch, [int(c) for c in a.chunks.split(",")])
        return
    pil = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs[:16]]
    if a.backends:
        backends(blobs, pil, a)
        return
    cols = ("chunk", "1 thread", "2 threads", "own MiB", "mean|d|", "max|d|")
    print(f"{'decoder':12s} " + " ".join(f"{c:>9s}" for c in cols))
    for name in ("nvjpeg", "nvimgcodec"):
        dec = jpeg_decoder("cuda", name)
        if dec is None:
            print(f"{name:12s} not available here")
            continue
        mean, mx = difference(blobs, pil, name)
        for chunk in (int(c) for c in a.chunks.split(",")):
            r1 = rate(blobs, a.batch, 1, name, chunk)
            r2 = rate(blobs, a.batch, 2, name, chunk)
            own = decoder_memory_bytes() / 2**20
            print(f"{name:12s} {chunk:9d} {r1:9.0f} {r2:9.0f} {own:9.0f} {mean:9.3f} {mx:9d}")
    print(f"torch peak allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
