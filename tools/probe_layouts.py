"""Each network in each memory layout: first-call cost and time per call, on one device.

Usage: python tools/probe_layouts.py [--device cuda] [--batch 128] [--calls 50]

"first call" is ``warmup()`` (on CUDA: cuDNN plans and the CUDA-graph capture of the fixed batch
size), "per call" the median of ``--calls`` calls after it (graph replays on CUDA). Decides
``CHANNELS_LAST_ON_CUDA`` / ``CHANNELS_LAST_ON_CPU`` in ``facefleet.models`` (which models run
channels-last on which device).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from facefleet.models import MODELS, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    where = torch.cuda.get_device_name(dev) if cuda else f"cpu, {torch.get_num_threads()} threads"
    print(f"{where}, batch {a.batch}, {dtype}")
    print(f"{'model':30s} {'layout':14s} {'first call ms':>14s} {'per call ms':>12s} {'img/s':>9s}")
    for name in MODELS:
        for cl in (False, True):
            net = load_model(name, dev, dtype, channels_last=cl)
            if cuda:
                net.use_fixed_batches((a.batch,))
            x = torch.rand((a.batch, *net.input_shape), device=dev, dtype=dtype)
            with torch.inference_mode():
                sync()
                t0 = time.perf_counter()
                net.warmup() if cuda else net(x)
                sync()
                first = (time.perf_counter() - t0) * 1e3
                times = []
                for _ in range(a.calls):
                    t0 = time.perf_counter()
                    net(x)
                    sync()
                    times.append((time.perf_counter() - t0) * 1e3)
            ms = statistics.median(times)
            layout = "channels-last" if cl else "channels-first"
            print(f"{name:30s} {layout:14s} {first:14.1f} {ms:12.2f} {a.batch / ms * 1e3:9.0f}")


if __name__ == "__main__":
    main()
