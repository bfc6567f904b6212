"""Dynamic batching of ``POST /v1/reconstruct``: concurrent requests run as one batch on a device.

One :class:`DynamicBatcher` per device owns a warm :class:`~facefleet.pipeline.Reconstructor` on a
thread of its own (the networks are built and warmed up once, at start-up: no model load or compile
per request). Requests queue up while a batch runs; when the device is free the next batch takes
everything queued (at most ``max_batch``), waiting ``wait_s`` for more only when fewer than that are
there. So a lone request pays at most ``wait_s`` of latency, and under load the batches fill
themselves while the previous one runs: throughput grows with the number of clients.

Decoding happens in the batch as well: JPEGs on the GPU (nvJPEG / nvImageCodec) where there is one,
Pillow otherwise (:func:`facefleet.io.gpu_decode.decode_images`, EXIF orientation applied), so the
request handlers only move bytes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facefleet.types import ImageResult


@dataclass
class Reply:
    """What a request gets back: its ``result``; ``image``: the decoded ``(H, W, 3)`` uint8 RGB image
    when the request asked for it (overlays), else None."""

    result: ImageResult
    image: np.ndarray | None = None


@dataclass
class _Request:
    data: bytes
    source: str
    texture: bool
    keep_image: bool
    future: Future[Reply] = field(default_factory=Future)
    t: float = field(default_factory=time.perf_counter)


class BatcherClosed(RuntimeError):
    """The batcher is shutting down (the server answers 503)."""


class DynamicBatcher:
    """Batches requests onto one device.

    ``build`` makes the reconstructor on the batcher's thread (so its CUDA context and compiled code
    belong to it); ``on_batch(size, seconds)`` is told each batch's size and device time (metrics).
    """

    def __init__(
        self,
        build: Callable[[], Any],
        *,
        name: str,
        max_batch: int,
        wait_s: float,
        max_pixels: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.name = name
        self.max_batch = int(max_batch)
        self.wait_s = float(wait_s)
        self.max_pixels = int(max_pixels)
        self._build = build
        self._on_batch = on_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._closed = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.rec: Any = None
        self._thread = threading.Thread(target=self._main, name=f"batcher-{name}", daemon=True)

    def start(self) -> DynamicBatcher:
        self._thread.start()
        return self

    def submit(
        self, data: bytes, source: str, *, texture: bool = False, keep_image: bool = False
    ) -> Future[Reply]:
        """Queue one encoded image; the future gives its :class:`Reply` (an undecodable image gives a
        result with ``error`` set, like every runner's)."""
        if self._closed.is_set():
            raise BatcherClosed(f"{self.name} is shutting down")
        req = _Request(data, source, texture, keep_image)
        self._queue.put(req)
        return req.future

    def depth(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, finish the queued ones, stop the thread."""
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the batcher's thread ----------------------------------------------------------------
    def _main(self) -> None:
        try:
            self.rec = self._build()
        except BaseException as e:  # the server reports it on /readyz and refuses requests
            self.error = e
            self._closed.set()
            self._fail_queued(e)
            return
        finally:
            self.ready.set()
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._run(batch)

    def _collect(self) -> list[_Request] | None:
        """The next batch: everything queued (at most ``max_batch``), waiting ``wait_s`` for more when
        short. None when closed and empty."""
        first = self._queue.get()
        if first is None:
            return self._drain_after_close()
        batch = [first]
        deadline = time.perf_counter() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if item is None:  # closing: finish what is queued
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _drain_after_close(self) -> list[_Request] | None:
        """After close: the next batch of what is still queued (the rest goes back, behind the stop
        mark), None when nothing is."""
        rest = self._take_all()
        if not rest:
            return None
        for item in rest[self.max_batch :]:
            self._queue.put(item)
        self._queue.put(None)
        return rest[: self.max_batch]

    def _take_all(self) -> list[_Request]:
        """Every request queued now (stop marks dropped)."""
        items: list[_Request] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)

    def _run(self, batch: list[_Request]) -> None:
        from facefleet.io.decode import ImageDecodeError
        from facefleet.io.gpu_decode import decode_images

        t0 = time.perf_counter()
        try:
            decoded = decode_images(
                [r.data for r in batch],
                [r.source for r in batch],
                self.rec.device,
                max_pixels=self.max_pixels,
                stack=True,
            )
            ok = [(r, t) for r, t in zip(batch, decoded.items) if not isinstance(t, ImageDecodeError)]
            results: dict[int, ImageResult] = {}
            for r, t in zip(batch, decoded.items):
                if isinstance(t, ImageDecodeError):
                    results[id(r)] = ImageResult(source=r.source, width=0, height=0, error=str(t))
            if ok:
                images: Any = (
                    decoded.stack
                    if decoded.stack is not None and len(ok) == len(batch)
                    else [t for _, t in ok]
                )
                texture = any(r.texture for r, _ in ok)
                got = self.rec.reconstruct_tensors(images, [r.source for r, _ in ok], texture=texture)
                for (r, _), res in zip(ok, got):
                    results[id(r)] = res
            for r, t in zip(batch, decoded.items):
                image = None
                if r.keep_image and not isinstance(t, ImageDecodeError):
                    image = t.permute(1, 2, 0).cpu().numpy()
                r.future.set_result(Reply(results[id(r)], image))
        except BaseException as e:  # a failed batch fails its requests, not the server
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(e)
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - t0)

    def _fail_queued(self, e: BaseException) -> None:
        for item in self._take_all():
            item.future.set_exception(e)
