"""What the GPU's JPEG decoding needs of the SMs, and what it gets beside the networks. (GPU host)

Usage: python tools/probe_decode_share.py --corpus DIR [--seconds 5] [--modes rgb,pinned,gray,tv]
       [--threads 1,2]

The engine's decoder process time-shares the GPU with the networks' process (two CUDA contexts): it
decodes ~5,300 1080p JPEGs/s alone and ~3,100/s beside the networks (docs/benchmarks.md). Whether that
is the SM kernels the decoder needs (colour conversion) waiting for their turn, or something else, is
what this asks. A child process decodes batches of 128 (chunks of 32, into targets made once, one
nvImageCodec decoder and CUDA stream per thread), unpaced, in one of these modes:

- ``rgb``: planar RGB as the engine decodes (the JPEG engine, then nvImageCodec's colour conversion);
- ``pinned``: as ``rgb``, the files' bytes in page-locked host memory (``CodeStream`` over numpy views of
  one pinned tensor): whether the bitstream uploads, pageable copies from ``bytes``, are what waits;
- ``gray``: the luma plane only (no colour conversion, a third of the output);
- ``tv``: torchvision's nvJPEG (``decode_jpeg`` on CUDA, one call per chunk).

Printed per mode: the kernels and copies the decoder runs per batch (torch's profiler over the child
process: CUPTI sees every kernel of its context, nvImageCodec's too), its rate alone, and the rate and
the networks' ms per batch when the networks (``Reconstructor.reconstruct_tensors``, compiled, fp16,
one decoded batch of 128 over and over) run in this process at the same time. Also the networks' own
kernel time per batch.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe_gil import load_corpus, warm_networks  # the compiled networks on the corpus's first batch

CHILD = r"""
import sys, threading, time, torch
from pathlib import Path
corpus, seconds, mode, nthreads = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
files = sorted(Path(corpus).rglob("*.jpg"))[:1024]
blobs = [f.read_bytes() for f in files]
nb = len(files) // 128
dev = torch.device("cuda", 0)

class Worker:
    def __init__(self):
        self.stream = torch.cuda.Stream(dev)
        if mode == "tv":
            import torchvision.io as tio
            self.tio = tio
            self.datas = [torch.frombuffer(b, dtype=torch.uint8) for b in blobs]
            return
        from nvidia import nvimgcodec as nv
        self.nv = nv
        kinds = nv.BackendKind
        self.dec = nv.Decoder(device_id=0, max_num_cpu_threads=4,
                              backends=[nv.Backend(kinds.HW_GPU_ONLY), nv.Backend(kinds.CPU_ONLY)])
        if mode == "gray":
            self.params = nv.DecodeParams(apply_exif_orientation=False, color_spec=nv.ColorSpec.GRAY,
                                          sample_format=nv.SampleFormat.P_Y)
            ch = 1
        else:
            self.params = nv.DecodeParams(apply_exif_orientation=False, color_spec=nv.ColorSpec.SRGB,
                                          sample_format=nv.SampleFormat.P_RGB)
            ch = 3
        self.buf = torch.empty((128, ch, 1080, 1920), dtype=torch.uint8, device=dev)
        self.targets = [nv.as_image(self.buf[i]) for i in range(128)]
        self.srcs = blobs
        if mode == "pinned":
            pin = torch.empty(sum(len(b) for b in blobs), dtype=torch.uint8, pin_memory=True)
            self.srcs, off = [], 0
            for b in blobs:
                view = pin[off:off + len(b)]
                view.copy_(torch.frombuffer(b, dtype=torch.uint8))
                self.srcs.append(view.numpy())
                off += len(b)

    def batch(self, k):
        i = (k % nb) * 128
        with torch.cuda.stream(self.stream):
            if mode == "tv":
                for c in range(0, 128, 32):
                    self.tio.decode_jpeg(self.datas[i + c:i + c + 32], device=dev)
            else:
                srcs = [self.nv.CodeStream(b) for b in self.srcs[i:i + 128]]
                for c in range(0, 128, 32):
                    self.dec.decode(srcs[c:c + 32], images=self.targets[c:c + 32], params=self.params,
                                    cuda_stream=self.stream.cuda_stream)
        self.stream.synchronize()

workers = [Worker() for _ in range(nthreads)]
for w in workers:
    w.batch(0); w.batch(1)
torch.cuda.synchronize()
print("ready", flush=True)
cmd = sys.stdin.readline().strip()
if cmd == "profile":
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for k in range(8):
            workers[0].batch(k)
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_time_total > 0]
    rows.sort(key=lambda e: -e.device_time_total)
    total = sum(e.self_device_time_total for e in rows) / 8e3
    print(f"  GPU time per batch of 128 (kernels and copies, self): {total:.2f} ms", flush=True)
    for e in rows[:8]:
        print(f"    {e.self_device_time_total / 8e3:7.3f} ms  {e.count / 8:6.1f} x  {e.key[:90]}", flush=True)
    print("done", flush=True)
    sys.exit(0)
stop = threading.Event(); counts = [0] * nthreads
def loop(j):
    k = 0
    while not stop.is_set():
        workers[j].batch(k + j); k += 1
    counts[j] = k
ts = [threading.Thread(target=loop, args=(j,)) for j in range(nthreads)]
t0 = time.perf_counter()
for t in ts: t.start()
time.sleep(seconds); stop.set()
for t in ts: t.join()
print(f"{sum(counts) * 128 / (time.perf_counter() - t0):.0f}", flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--modes", default="rgb,gray,tv")
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args()
    files, blobs, names = load_corpus(a.corpus)
    rec, imgs = warm_networks(blobs, names)

    def networks_ms(seconds: float) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            rec.reconstruct_tensors(imgs, names[:128])
            n += 1
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n * 1e3

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            rec.reconstruct_tensors(imgs, names[:128])
        torch.cuda.synchronize()
    kernels = sum(e.self_device_time_total for e in prof.key_averages()) / 5e3
    print(f"{torch.cuda.get_device_name()}, {len(files)} files, {a.seconds:.0f} s per row")
    alone_ms = networks_ms(a.seconds)
    print(f"networks alone: {alone_ms:.1f} ms per batch of 128, {kernels:.1f} ms of it GPU kernels")

    def child(mode: str, threads: int, cmd: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", CHILD, a.corpus, str(a.seconds), mode, str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdin is not None and p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            p.kill()
            raise RuntimeError(f"decoder child ({mode}) did not start: {line!r}")
        p.stdin.write(cmd + "\n")
        p.stdin.flush()
        return p

    print(f"{'decoder (mode, threads)':40s} {'alone img/s':>12s} {'beside img/s':>13s} {'networks ms':>12s}")
    for mode in a.modes.split(","):
        try:
            p = child(mode, 1, "profile")
        except RuntimeError as e:
            print(f"{mode}: {e}")
            continue
        out, _ = p.communicate()
        print(f"{mode}, the decoder's GPU work (8 batches profiled, one thread):")
        print(out.replace("done\n", ""), end="")
        for threads in (int(t) for t in a.threads.split(",")):
            p = child(mode, threads, "go")
            alone = float(p.communicate()[0].strip())
            p = child(mode, threads, "go")
            box: list[float] = []
            t = threading.Thread(target=lambda out=box: out.append(networks_ms(a.seconds - 0.5)))
            t.start()
            beside = float(p.communicate()[0].strip())
            t.join()
            print(f"{f'{mode}, {threads}':40s} {alone:12.0f} {beside:13.0f} {box[0]:12.1f}")
    print(f"networks alone again: {networks_ms(a.seconds):.1f} ms per batch")


if __name__ == "__main__":
    main()
