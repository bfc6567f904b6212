"""Whole images decoded on the host's cores for the decoder process, beside the GPU's JPEG decoder.

Why: beside the networks the decoder process's GPU decoding bounds a worker (an H200 decoded 3,100
1080p JPEGs/s there against 5,300 alone, docs/benchmarks.md, ninth session), while most host cores sit
idle. ``[gpu] host_decoders = N`` gives the decoder process N processes of its own that read and decode
(Pillow, libjpeg-turbo) the last ``k`` files of each batch as soon as the batch is cut, into a
region of shared host memory (page-locked for the copies when CUDA allows it); the decoder process
copies them into the batch's slot after the GPU part. Processes rather than threads: Pillow keeps the
GIL between its chunks (threads of one process reached 260 img/s on 16 cores) and the decoder
process's own thread needs it too.

``k`` follows the host's pace: one more file per batch when the host part was ready before the GPU part
was done, two fewer when the decoder process had to wait for it. A file the host could not decode (or
one larger than a frame's room) goes back to the GPU path, which reports errors with the usual wording.

The worker starts the host processes (:func:`start_processes`; a daemonic decoder process may not);
the decoder process (:class:`HostDecoders`) sends them tasks and owns the regions.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

FRAME_BYTES = 1088 * 1920 * 3  # a region's room per file: a 1080p frame (larger files take the GPU path)
RESULT_TIMEOUT = 60.0  # seconds a host file may take before the host processes count as gone


class HostJob:
    """The host part of one batch: ``paths[i]`` is decoded into ``region`` at ``i * frame_bytes``."""

    def __init__(self, region: int, paths: list[str], futures: list[Future[Any]]) -> None:
        self.region = region
        self.paths = paths
        self.futures = futures


class HostDecoders:
    """Decoder-process side: the regions of shared memory, the share per batch, and the tasks to the
    host processes (started by the worker, :func:`start_processes`: a daemonic decoder process may not
    start processes of its own) through the ``tasks`` / ``results`` queues."""

    def __init__(self, tasks: Any, results: Any, processes: int, regions: int, most: int) -> None:
        from multiprocessing import shared_memory

        self.tasks, self.results_queue = tasks, results
        self.processes = int(processes)
        self.most = max(1, int(most))  # files per batch at most (a region's room)
        self.frame_bytes = FRAME_BYTES
        self.k = self.processes  # files per batch now
        size = self.most * self.frame_bytes
        self.shms = [shared_memory.SharedMemory(create=True, size=size) for _ in range(regions)]
        self.free = list(range(regions))
        self.lock = threading.Lock()  # free regions and futures: the child's main thread and decoders
        self.pinned: list[int] = []  # regions registered with CUDA (page-locked)
        self.futures: dict[int, Future[Any]] = {}
        self.next_id = 0
        self.broken = False  # a result did not come back in time: no more files to the host processes
        self.collector = threading.Thread(target=self._collect, name="host-results", daemon=True)
        self.collector.start()

    def _collect(self) -> None:
        while True:
            msg = self.results_queue.get()
            if msg is None:
                return
            with self.lock:
                fut = self.futures.pop(msg[0], None)
            if fut is not None:
                fut.set_result(msg[1])

    def pin(self) -> None:
        """Page-lock the regions for CUDA's copies (asynchronous and ~2x faster); best effort."""
        import torch

        for r, shm in enumerate(self.shms):
            try:
                if int(torch.cuda.cudart().cudaHostRegister(_address(shm), shm.size, 0)) == 0:
                    self.pinned.append(r)
            except Exception:  # pageable then: the copies still work, synchronously
                return

    def submit(self, paths: Sequence[str]) -> tuple[HostJob | None, list[str]]:
        """Take the last files of a batch for the host processes; returns the job (None when no region
        is free or the share is zero) and the paths left to the GPU path."""
        k = 0 if self.broken else min(self.k, self.most, len(paths) // 2)
        mine, rest = list(paths[len(paths) - k :]), list(paths[: len(paths) - k])
        futures: list[Future[Any]] = [Future() for _ in mine]
        with self.lock:
            if k < 1 or not self.free:
                return None, list(paths)
            region = self.free.pop()
            first, self.next_id = self.next_id, self.next_id + k
            for i, fut in enumerate(futures):
                self.futures[first + i] = fut
        name = self.shms[region].name
        for i, p in enumerate(mine):
            self.tasks.put((first + i, p, name, i * self.frame_bytes, self.frame_bytes))
        return HostJob(region, mine, futures), rest

    def results(self, job: HostJob) -> list[tuple[int, int] | str]:
        """Each file's ``(height, width)`` in the region, or why the host did not decode it; adjusts the
        share for the next batches from whether the decoder process had to wait."""
        t0 = time.perf_counter()
        out: list[tuple[int, int] | str] = []
        for fut in job.futures:
            try:
                out.append(fut.result(timeout=0 if self.broken else RESULT_TIMEOUT))
            except Exception:  # a host process died (its task never comes back): the GPU path takes the
                self.broken = True  # files, and every batch from now on
                out.append("the host decoder processes stopped answering")
        waited = time.perf_counter() - t0
        self.k = max(1, self.k - 2) if waited > 0.001 else min(self.most, self.k + 1)
        return out

    def view(self, job: HostJob, i: int, shape: tuple[int, int]) -> Any:
        """File ``i`` of ``job`` as an ``(h, w, 3)`` uint8 array of the region (valid until released)."""
        import numpy as np

        h, w = shape
        buf = _buf(self.shms[job.region])
        flat = np.frombuffer(buf, dtype=np.uint8, count=h * w * 3, offset=i * self.frame_bytes)
        return flat.reshape(h, w, 3)

    def release(self, job: HostJob) -> None:
        """The region's copies are done: it can take another batch."""
        with self.lock:
            self.free.append(job.region)

    def close(self) -> None:
        self.results_queue.put(None)  # ends the collector
        self.collector.join(timeout=5)
        if self.pinned:
            import torch

            for r in self.pinned:
                with contextlib.suppress(Exception):
                    torch.cuda.cudart().cudaHostUnregister(_address(self.shms[r]))
            self.pinned = []
        for shm in self.shms:
            with contextlib.suppress(Exception):
                shm.close()
            with contextlib.suppress(Exception):
                shm.unlink()


def _buf(shm: Any) -> memoryview:
    buf = shm.buf
    assert buf is not None, "the shared block is closed"
    return buf


def _address(shm: Any) -> int:
    """Where the block ``shm`` is mapped in this process."""
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(_buf(shm)))


# -- the host processes ---------------------------------------------------------------------------
def start_processes(n: int) -> tuple[Any, Any, list[Any]]:
    """Start ``n`` host decoder processes (worker side); their task and result queues, and them."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    me = os.getpid()
    procs = [
        ctx.Process(target=host_main, args=(tasks, results, me), name=f"facefleet-host-{k}", daemon=True)
        for k in range(n)
    ]
    for p in procs:
        p.start()
    return tasks, results, procs


def stop_processes(tasks: Any, procs: list[Any]) -> None:
    """Worker side: tell the host processes to end, and wait for them (a few seconds at most)."""
    for _ in procs:
        with contextlib.suppress(Exception):
            tasks.put(None)
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)


def host_main(tasks: Any, results: Any, parent: int) -> None:
    """A host decoder process: decodes the tasks it takes until told to stop or its worker is gone."""
    import queue
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the worker died (kill -9): nobody will stop this process
                return
            continue
        if task is None:
            return
        results.put((task[0], _decode_into(*task[1:])))


_attached: dict[str, Any] = {}


def _decode_into(path: str, shm_name: str, offset: int, room: int) -> tuple[int, int] | str:
    """Read and decode ``path`` (EXIF orientation applied) into the shared block at ``offset``;
    ``(height, width)``, or the reason it was not (the GPU path then decodes the file again)."""
    import numpy as np

    from facefleet.io.decode import decode_image
    from facefleet.io.discover import read_bytes

    try:
        rgb = decode_image(read_bytes(path), path)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    h, w = int(rgb.shape[0]), int(rgb.shape[1])  # (H, W, 3) RGB
    if h * w * 3 > room:
        return f"{w}x{h} is larger than a frame's room"
    buf = _attached.get(shm_name)
    if buf is None:  # mapped for this process's life; the decoder process owns (and unlinks) the block
        from facefleet.engine.texture_ring import map_block

        buf = _attached[shm_name] = map_block(shm_name, writable=True)
    np.frombuffer(buf, dtype=np.uint8, count=h * w * 3, offset=offset)[:] = rgb.reshape(-1)
    return h, w
