"""How fast can a GPU worker hand face textures to its writer processes? (any host)

Usage: python tools/probe_texture_transport.py [--processes 4] [--textures 128] [--size 512] [--reps 3]

A GPU worker writing OBJ + texture PNG files sends each face's (size, size, 4) uint8 texture to a
spawned writer process. This times the two ways of doing it for a batch of textures: as pickled
arrays through ``ProcessPoolExecutor`` (what the engine does: one feeder thread pickles, one pipe
carries them), and as a slice of one ``multiprocessing.shared_memory`` block per batch (one copy in,
each writer maps the block and reads its slice). The writers do nothing else, so the figures are the
transport's ceiling in textures per second.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory

import numpy as np


def _touch_array(a: np.ndarray) -> int:
    return int(a[0, 0, 0])


def _touch_shared(name: str, shape: tuple[int, ...], k: int) -> int:
    block = shared_memory.SharedMemory(name=name)
    try:
        return int(np.ndarray(shape, np.uint8, buffer=block.buf)[k, 0, 0, 0])
    finally:
        block.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--textures", type=int, default=128, help="textures per batch")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    batch = np.random.default_rng(0).integers(0, 255, (a.textures, a.size, a.size, 4), dtype=np.uint8)
    mb = batch[0].nbytes / 2**20
    with ProcessPoolExecutor(a.processes, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_touch_array, [batch[0]] * a.processes))  # start the processes
        t0 = time.perf_counter()
        for _ in range(a.reps):
            for f in [pool.submit(_touch_array, batch[k]) for k in range(a.textures)]:
                f.result()
        pickled = (time.perf_counter() - t0) / a.reps
        t0 = time.perf_counter()
        for _ in range(a.reps):
            block = shared_memory.SharedMemory(create=True, size=batch.nbytes)
            try:
                np.ndarray(batch.shape, np.uint8, buffer=block.buf)[:] = batch
                futs = [pool.submit(_touch_shared, block.name, batch.shape, k) for k in range(a.textures)]
                for f in futs:
                    f.result()
            finally:
                block.close()
                block.unlink()
        shared = (time.perf_counter() - t0) / a.reps
    print(f"{a.textures} textures of {mb:.1f} MiB per batch, {a.processes} writer processes")
    for name, dt in (("pickled through the pool", pickled), ("one shared-memory block per batch", shared)):
        print(f"{name:36s} {dt * 1e3:8.1f} ms per batch {a.textures / dt:8.0f} textures/s")


if __name__ == "__main__":
    main()
