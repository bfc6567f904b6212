"""Which GPU JPEG decoder, and how many images per call? (GPU host)

Usage: python tools/probe_decode.py --corpus DIR [--images 1024] [--batch 128] [--chunks 16,32,128]

Decodes the same JPEG bytes (held in memory) through ``facefleet.io.gpu_decode.decode_images`` as a
worker does (batches of ``--batch`` stacked into one tensor, ``chunk`` images per decoder call), with
each GPU decoder available here (torchvision's nvJPEG; nvImageCodec when ``nvidia-nvimgcodec`` is
installed). Prints images/s with one thread and with two (two decoder threads or two workers per
GPU), the decoder's own buffer memory, and the pixel difference against Pillow (libjpeg-turbo).
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--chunks", default="16,32,128")
    a = ap.parse_args()
    files = sorted(Path(a.corpus).rglob("*.jpg"))[: a.images]
    blobs = [f.read_bytes() for f in files]
    mb = sum(map(len, blobs)) / len(blobs) / 1e6
    print(f"{len(blobs)} JPEGs, {mb:.2f} MB each on average, batch {a.batch}, {torch.cuda.get_device_name()}")
    pil = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs[:16]]
    cols = ("chunk", "1 thread", "2 threads", "own MiB", "mean|d|", "max|d|")
    print(f"{'decoder':12s} " + " ".join(f"{c:>9s}" for c in cols))
    for name in ("nvjpeg", "nvimgcodec"):
        dec = jpeg_decoder("cuda", name)
        if dec is None:
            print(f"{name:12s} not available here")
            continue
        got = decode_images(blobs[:16], [str(i) for i in range(16)], "cuda", decoder=name).items
        diffs = [
            np.abs(t.permute(1, 2, 0).cpu().numpy().astype(int) - p.astype(int))
            for t, p in zip(got, pil, strict=True)
            if isinstance(t, torch.Tensor)
        ]
        mean = float(np.mean([d.mean() for d in diffs]))
        mx = int(max(d.max() for d in diffs))
        for chunk in (int(c) for c in a.chunks.split(",")):
            r1 = rate(blobs, a.batch, 1, name, chunk)
            r2 = rate(blobs, a.batch, 2, name, chunk)
            own = decoder_memory_bytes() / 2**20
            print(f"{name:12s} {chunk:9d} {r1:9.0f} {r2:9.0f} {own:9.0f} {mean:9.3f} {mx:9d}")
    print(f"torch peak allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
