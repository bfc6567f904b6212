"""Where a GPU worker's start-up goes: each step of building the networks timed, in one process.

    python benchmarks/startup_steps.py compiled          # as a worker builds them (cold or warm cache)
    python benchmarks/startup_steps.py compiled --artifacts   # loading the portable artifacts first
    python benchmarks/startup_steps.py eager             # no torch.compile: cuDNN plans and captures only

Run it twice with the same ``TORCHINDUCTOR_CACHE_DIR`` (the first run fills a cold cache) and set
``TORCHINDUCTOR_COMPILE_THREADS`` as a worker would (1 on a warm cache). Prints one line per step with
the seconds since the script started, then the time of three real batches (the shared photos) and the
steady time per batch. Needs CUDA. docs/benchmarks.md ("Start-up") holds the figures.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

T0 = time.perf_counter()


def say(text: str) -> None:
    print(f"[{time.perf_counter() - T0:7.2f} s] {text}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["compiled", "eager"])
    p.add_argument("--artifacts", action="store_true", help="load the portable compile artifacts first")
    p.add_argument("--images", type=int, default=64, help="shared photos per timed batch")
    args = p.parse_args()

    import torch

    say(f"import torch {torch.__version__}")
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    say("CUDA context")
    if args.artifacts:
        from facefleet.platforms import load_compile_artifacts

        say(f"artifacts loaded: {load_compile_artifacts(os.environ.get('TORCHINDUCTOR_CACHE_DIR', '.'))}")
    from facefleet.detect.views import warm_up_letterbox
    from facefleet.mesh.sampling import warm_up_gather
    from facefleet.pipeline import Reconstructor

    rec = Reconstructor("cuda", "fp16", compiled=args.mode == "compiled")
    nets = rec.networks()
    say(f"{len(nets)} networks loaded")
    for net in nets:
        t = time.perf_counter()
        net.warmup()
        torch.cuda.synchronize()
        say(f"  warm-up of {Path(net.source).name}: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    crops = (rec.mesher.padding_mode, rec.dtype)
    warm_up_gather(rec.device, compiled=rec.mesher.compiled, grid=crops, cache=rec.compile_cache)
    warm_up_letterbox(rec.device, compiled=rec.detector._compiled_casts, cache=rec.compile_cache)
    torch.cuda.synchronize()
    say(f"  crop gather and letterbox: {time.perf_counter() - t:.2f} s")

    from facefleet.bench.corpus import shared_data_dir
    from facefleet.io.decode import read_image

    data = shared_data_dir()
    if data is None:
        raise SystemExit("startup_steps: the timed batches need the shared photos (FACEFLEET_SHARED_DATA)")
    files = sorted(str(f) for f in (data / "images").glob("*.jpg"))[: args.images]
    images = [torch.from_numpy(read_image(f)).permute(2, 0, 1).cuda() for f in files]
    for k in range(3):
        t = time.perf_counter()
        results = rec.reconstruct_tensors(images, files)
        torch.cuda.synchronize()
        faces = sum(len(r.faces) for r in results)
        say(f"  batch {k} of {len(files)} photos: {1000 * (time.perf_counter() - t):.1f} ms, {faces} faces")
    t = time.perf_counter()
    for _ in range(20):
        rec.reconstruct_tensors(images, files)
    torch.cuda.synchronize()
    say(f"steady: {1000 * (time.perf_counter() - t) / 20:.1f} ms per batch")


if __name__ == "__main__":
    main()
