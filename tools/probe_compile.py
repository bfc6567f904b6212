"""Is torch.compile worth it for the three networks and the pipeline? (GPU host)

Usage: python tools/probe_compile.py [--corpus DIR] [--modes default,reduce-overhead] [--batch 128]

Per network at the fixed batch size: eager vs compiled time per call (median of CUDA-event timings),
compile time and the largest output difference; then the device pipeline on one decoded batch with
eager and with compiled networks.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from facefleet.pipeline import Reconstructor


def _time(fn, reps: int = 20) -> float:  # type: ignore[no-untyped-def]
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--modes", default="default,reduce-overhead")
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    rec = Reconstructor(device="cuda", precision="fp16")
    rec.warmup()
    nets = {k: rec.detector.network(k) for k in rec.detector.kinds}
    nets["landmark"] = rec.mesher.network
    eager = {k: n._eager for k, n in nets.items()}

    imgs = None
    if a.corpus:
        from facefleet.io.gpu_decode import decode_batch

        files = sorted(Path(a.corpus).rglob("*.jpg"))[: a.batch]
        dec = decode_batch([f.read_bytes() for f in files], [str(f) for f in files], torch.device("cuda"))
        imgs = torch.stack([t for t in dec if isinstance(t, torch.Tensor)])
        names = [str(f) for f in files][: len(imgs)]

        def pipe() -> None:
            rec.reconstruct_tensors(imgs, names)

        print(f"pipeline eager b{len(imgs)}: {_time(pipe, 10):.1f} ms/batch")

    for mode in a.modes.split(","):
        torch._dynamo.reset()
        for k, n in nets.items():
            x = torch.rand((a.batch, *n.input_shape), device="cuda", dtype=torch.float16)
            n._eager = eager[k]
            ref = n(x)
            t_e = _time(lambda n=n, x=x: n(x))
            try:
                comp = torch.compile(eager[k], mode=mode, dynamic=False, fullgraph=True)

                def run(x: torch.Tensor, comp=comp, graphs=mode == "reduce-overhead") -> tuple:  # type: ignore[no-untyped-def]
                    if graphs:  # CUDA graphs reuse their output memory: copy out before the next call
                        torch.compiler.cudagraph_mark_step_begin()
                        return tuple(o.clone() for o in comp(x))
                    return comp(x)

                t0 = time.perf_counter()
                n._eager = run
                out = n(x)
                torch.cuda.synchronize()
                t_c0 = time.perf_counter() - t0
                out = tuple(o.clone() for o in n(x))
                diff = max(float((o.float() - r.float()).abs().max()) for o, r in zip(out, ref))
                t_c = _time(lambda n=n, x=x: n(x))
                print(
                    f"{mode:16s} {k:9s} eager {t_e:6.2f} ms  compiled {t_c:6.2f} ms  "
                    f"({t_e / t_c:4.2f}x)  compile {t_c0:5.1f} s  max diff {diff:.2e}"
                )
            except Exception as e:  # report and go on
                n._eager = eager[k]
                print(f"{mode:16s} {k:9s} compile failed: {type(e).__name__}: {str(e)[:300]}")
        if imgs is not None:
            print(f"pipeline {mode} b{len(imgs)}: {_time(pipe, 10):.1f} ms/batch")
        for k, n in nets.items():
            n._eager = eager[k]


if __name__ == "__main__":
    main()
