"""Decoding beside the networks: in another process (the engine's design) or on a lean thread of the
networks' own process (one CUDA context). (GPU host, nvImageCodec installed)

Usage: python tools/probe_lean_decode.py --corpus DIR [--seconds 6]

The networks run ``Reconstructor.reconstruct_tensors`` on one decoded batch of 128 frames over and
over; the decoder decodes batches of 128 over and over (not paced). Printed: the networks' ms per
batch and the decoder's images/s, each alone and together:

- "process": a child process running ``facefleet.io.gpu_decode.decode_images`` (as the engine's
  decoder process does: headers parsed in Python, chunks of 32 written into a batch tensor);
- "lean thread": a thread of the networks' process that makes only nvImageCodec calls per batch
  (``CodeStream`` per file, from the bytes in memory or from the path, and one ``decode`` per chunk into
  targets made once for two batch buffers): what the device thread loses to its GIL hand-overs, and
  what the decoder gains from sharing the networks' CUDA context (two processes time-share the GPU).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe_gil import (
    CHILD,
    load_corpus,
    warm_networks,
)  # the decoder process and the networks, shared with that probe


class LeanDecoder:
    """nvImageCodec calls only: targets made once, one ``decode`` per chunk."""

    def __init__(self, files: list[Path], blobs: list[bytes], shape: tuple[int, ...], chunk: int) -> None:
        from nvidia import nvimgcodec as nv

        self.nv = nv
        self.files, self.blobs, self.chunk = files, blobs, chunk
        kinds = nv.BackendKind
        backends = [nv.Backend(kinds.HW_GPU_ONLY), nv.Backend(kinds.CPU_ONLY)]
        self.dec = nv.Decoder(device_id=0, max_num_cpu_threads=4, backends=backends)
        self.params = nv.DecodeParams(
            apply_exif_orientation=False, color_spec=nv.ColorSpec.SRGB, sample_format=nv.SampleFormat.P_RGB
        )
        self.bufs = torch.empty((2, 128, *shape), dtype=torch.uint8, device="cuda")
        self.targets = [[nv.as_image(self.bufs[s, i]) for i in range(128)] for s in range(2)]
        self.stream = torch.cuda.Stream()
        self.batches = len(files) // 128

    def batch(self, k: int, from_paths: bool) -> None:
        nv, i, s = self.nv, (k % self.batches) * 128, k % 2
        if from_paths:
            srcs = [nv.CodeStream(str(f)) for f in self.files[i : i + 128]]
        else:
            srcs = [nv.CodeStream(b) for b in self.blobs[i : i + 128]]
        for c in range(0, 128, self.chunk):
            self.dec.decode(
                srcs[c : c + self.chunk],
                images=self.targets[s][c : c + self.chunk],
                params=self.params,
                cuda_stream=self.stream.cuda_stream,
            )
        self.stream.synchronize()

    def check(self, expected: torch.Tensor) -> None:
        self.batch(0, False)
        diff = int((self.bufs[0].int() - expected.int()).abs().max())
        print(f"lean decoder, chunks of {self.chunk}: largest pixel difference to decode_images' {diff}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--chunks", default="32,128")
    a = ap.parse_args()
    files, blobs, names = load_corpus(a.corpus)
    rec, imgs = warm_networks(blobs, names)

    def networks(stop: threading.Event, out: list[float]) -> None:
        n, t0 = 0, time.perf_counter()
        while not stop.is_set():
            rec.reconstruct_tensors(imgs, names[:128])
            n += 1
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / max(1, n) * 1e3)

    def lean(d: LeanDecoder, from_paths: bool, stop: threading.Event, out: list[float]) -> None:
        k, t0 = 0, time.perf_counter()
        with torch.cuda.stream(d.stream):
            while not stop.is_set():
                d.batch(k, from_paths)
                k += 1
        out.append(k * 128 / (time.perf_counter() - t0))

    def run(*targets: Any) -> list[float]:
        stop = threading.Event()
        outs: list[list[float]] = [[] for _ in targets]
        pairs = zip(targets, outs, strict=True)
        threads = [threading.Thread(target=t, args=(*args, stop, o)) for (t, *args), o in pairs]
        for t in threads:
            t.start()
        time.sleep(a.seconds)
        stop.set()
        for t in threads:
            t.join()
        return [o[0] for o in outs]

    print(f"{torch.cuda.get_device_name()}, {len(files)} files, {a.seconds:.0f} s per row")
    print(f"{'setting':58s} {'networks ms/batch':>18s} {'decoder img/s':>14s}")
    (alone,) = run((networks,))
    print(f"{'networks alone':58s} {alone:18.1f} {'':>14s}")
    for chunk in (int(c) for c in a.chunks.split(",")):
        d = LeanDecoder(files, blobs, tuple(imgs.shape[1:]), chunk)
        d.check(imgs)
        for from_paths in (False, True):
            src = "paths" if from_paths else "bytes"
            (r,) = run((lean, d, from_paths))
            print(f"{f'lean thread alone, chunks of {chunk}, from {src}':58s} {'':>18s} {r:14.0f}")
            ms, r = run((networks,), (lean, d, from_paths))
            print(f"{f'networks + lean thread, chunks of {chunk}, from {src}':58s} {ms:18.1f} {r:14.0f}")
        del d
    for backends in ("auto", "hw,cpu"):
        for with_networks in (False, True):
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, a.corpus, str(a.seconds), backends],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdin is not None and child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            child.stdin.write("go\n")
            child.stdin.flush()
            ms = run((networks,))[0] if with_networks else float("nan")
            rate = float(child.stdout.read().strip())
            child.wait()
            label = f"{'networks + ' if with_networks else ''}decoder process (decode_images, {backends})"
            print(f"{label:58s} {ms:18.1f} {rate:14.0f}")


if __name__ == "__main__":
    main()
