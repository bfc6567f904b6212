"""How fast can a GPU worker hand face textures to its writer processes? (any host)

Usage: python tools/probe_texture_transport.py [--processes 4] [--textures 128] [--size 512] [--reps 3]

A GPU worker writing OBJ + texture PNG files sends each face's (size, size, 4) uint8 texture to a
spawned writer process. This times three ways of doing it for a batch of textures: as pickled arrays
through ``ProcessPoolExecutor`` (one feeder thread pickles, one pipe carries them), as a slice of a
fresh ``multiprocessing.shared_memory`` block per batch, and through the engine's
:class:`facefleet.engine.texture_ring.TextureRing` (slots made once; the worker passes references).
The writers do nothing else, so the figures are the transport's ceiling in textures per second.

Then what each way costs the worker's device thread: a thread making tiny torch calls (each gives
the GIL up and takes it back, as the device thread's do) counts its calls per second alone and while
batches are handed over, paced to ``--pace`` textures per second: calls lost per texture.
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


def _touch_ref(ref: object) -> int:
    from facefleet.engine.texture_ring import resolve

    return int(resolve(ref)[0, 0, 0])


def _calls_per_second(handover: object, seconds: float, pace: float) -> tuple[float, float]:
    """(tiny torch calls per second on this thread, textures handed over per second) while another
    thread runs ``handover()`` (one batch) at most ``pace`` textures per second (0: no hand-over)."""
    import threading

    import torch

    stop = threading.Event()
    sent = [0]

    def feed() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            sent[0] += handover()  # type: ignore[operator]
            while not stop.is_set() and sent[0] > pace * (time.perf_counter() - t0):
                time.sleep(0.001)

    feeder = threading.Thread(target=feed) if pace > 0 else None
    x = torch.zeros(4)
    calls = 0
    if feeder is not None:
        feeder.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            x.add_(1)
        calls += 100
    dt = time.perf_counter() - t0
    stop.set()
    if feeder is not None:
        feeder.join()
    return calls / dt, sent[0] / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--textures", type=int, default=128, help="textures per batch")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pace", type=float, default=150.0, help="textures per second for the thread test")
    ap.add_argument("--seconds", type=float, default=4.0)
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
        from facefleet.engine.texture_ring import TextureRing

        ring = TextureRing(2, batch.nbytes)

        def via_ring() -> int:
            slot = ring.take(60.0)
            assert slot is not None
            view = ring.views[slot].reshape(batch.shape)
            view[:] = batch  # the device thread's copy out of the GPU lands here
            refs = [ring.ref(view[k]) for k in range(a.textures)]
            for f in [pool.submit(_touch_ref, r) for r in refs]:
                f.result()
            ring.release(slot)
            return a.textures

        def via_pickle() -> int:
            for f in [pool.submit(_touch_array, batch[k]) for k in range(a.textures)]:
                f.result()
            return a.textures

        t0 = time.perf_counter()
        for _ in range(a.reps):
            via_ring()
        ringed = (time.perf_counter() - t0) / a.reps
        print(f"{a.textures} textures of {mb:.1f} MiB per batch, {a.processes} writer processes")
        for name, dt in (
            ("pickled through the pool", pickled),
            ("one shared-memory block per batch", shared),
            ("the engine's texture ring", ringed),
        ):
            print(f"{name:36s} {dt * 1e3:8.1f} ms per batch {a.textures / dt:8.0f} textures/s")
        alone, _ = _calls_per_second(None, a.seconds, 0)
        print(f"a thread's tiny torch calls: {alone:,.0f}/s alone")
        for name, fn in (("pickled through the pool", via_pickle), ("the engine's texture ring", via_ring)):
            calls, rate = _calls_per_second(fn, a.seconds, a.pace)
            lost = (alone - calls) / max(rate, 1e-9)
            print(f"  beside {rate:5.0f} textures/s {name:28s} {calls:10,.0f}/s: {lost:6.0f} lost each")
        ring.close()


if __name__ == "__main__":
    main()
