"""File reading and image decoding of a GPU worker in a child process of its own.

Why a process: a worker's device thread issues ~1,500 torch calls per batch, and every call gives the
GIL up and must win it back. A decoder thread in the same process (reading 128 files, parsing their
headers, preparing and running the GPU JPEG decoder's calls) takes the GIL between its own C calls,
and each hand-over stalls the device thread: a batch's device work takes about half as long again
beside a decoder thread (whatever the decoder), and about as long as alone beside a decoder in another
process (docs/benchmarks.md, "What bounds a GPU worker").

The worker allocates ``slots`` (one flat uint8 buffer per batch in flight) in its device memory and
hands them to the child once, through CUDA IPC (torch.multiprocessing's sharing of CUDA tensors; on
the CPU, shared memory, which the tests use). Per batch the worker sends the paths as soon as the
batch is cut (the child starts reading them) with the request to decode them, then the slot once one
is free; the child decodes the batch straight into the slot (one batch tensor at the slot's start;
with three slots, one is the batch decoded ahead), waits for its stream and answers with where each
image lies in the slot. A batch that does not stack (mixed sizes, a file the GPU decoder refuses) is
decoded into the child's own memory and copied in; images that do not fit in what is left of the slot
(photos much larger than the frames the slot was sized for) go back encoded; the worker decodes those
itself and then grows the slot. The worker reuses a slot only after the kernels that read it are done.

The child exits when the worker's end of its pipe closes (the worker ended, or was killed).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

ALIGN = 512  # bytes: each image starts on an aligned offset of its slot


@dataclass
class Decoded:
    """What the child made of one batch. ``items[k]``: ``("slot", offset, (3, h, w))``, ``("encoded",
    bytes)`` (decoded, but larger than what was left of the slot: the worker decodes it itself) or
    ``("error", ImageDecodeError)``; ``stacked``: every image is in the slot, same size, one after the
    other from offset 0 (the worker views them as one ``(B, 3, H, W)`` tensor). ``device_bytes``: the
    child's peak device memory (its decoding buffers, outside the slots); ``needed``: the slot size
    that would have held every image of the batch (the worker grows a slot that was too small)."""

    batch: int
    items: list[tuple[Any, ...]]
    stacked: bool
    read_seconds: float
    decode_seconds: float
    device_bytes: int = 0
    needed: int = 0  # slot bytes the batch would have needed for all its images
    copy_seconds: float = 0.0  # a copy into the slot (none when decoded in place) and the wait for it
    slot_wait_seconds: float = 0.0  # read, waiting for the worker to free a slot


class DecoderProcessError(RuntimeError):
    """The decoder process failed or ended."""


class DecoderProcess:
    """Worker side: starts the child, sends requests, hands out the answers as futures.

    >>> proc = DecoderProcess(slots, decoder="auto", chunk=32, readers=4).start()   # doctest: +SKIP
    >>> proc.wait_ready()                   # doctest: +SKIP
    >>> proc.read(7, paths)                 # doctest: +SKIP  (batch 7 is cut: the child starts reading)
    >>> fut = proc.decode(7)                # doctest: +SKIP  (Future[Decoded]: decoding starts)
    >>> proc.place(7, slot=0)               # doctest: +SKIP  (slot 0 is free: the images go there)
    """

    def __init__(
        self,
        slots: Sequence[Any],
        *,
        decoder: str = "auto",
        chunk: int = 32,
        readers: int = 4,
        threads: int = 1,
        backends: str = "auto",
        cpu_threads: int = 0,
        start_timeout: float = 120.0,
        max_file_bytes: int = 256 << 20,
    ) -> None:
        self.slots = list(slots)
        # backends, cpu_threads: nvImageCodec's (facefleet.io.gpu_decode.configure_nvimgcodec)
        self.settings = _Settings(
            decoder,
            int(chunk),
            int(readers),
            max(1, int(threads)),
            backends,
            int(cpu_threads),
            int(max_file_bytes),
        )
        self.start_timeout = float(start_timeout)
        self._proc: Any = None
        self._to_child: Any = None
        self._from_child: Any = None
        self._futures: dict[int, Future[Decoded]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._receiver: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closing = False

    def start(self) -> DecoderProcess:
        import multiprocessing as mp

        import torch.multiprocessing  # noqa: F401  (registers the pickling of CUDA / shared tensors)

        ctx = mp.get_context("spawn")
        req_r, req_w = ctx.Pipe(duplex=False)
        ans_r, ans_w = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=child_main,
            args=(req_r, ans_w, self.slots, self.settings),
            name="facefleet-decoder",
            daemon=True,
        )
        self._proc.start()
        req_r.close()
        ans_w.close()
        self._to_child, self._from_child = req_w, ans_r
        return self

    def wait_ready(self) -> DecoderProcess:
        """Wait for the child's set-up (imports, CUDA context, JPEG decoder: seconds), so that it
        overlaps the worker's own (:meth:`start` returns at once)."""
        ans_r = self._from_child
        if not ans_r.poll(self.start_timeout):
            self.close()
            raise DecoderProcessError(f"the decoder process did not start within {self.start_timeout:.0f} s")
        try:
            hello = ans_r.recv()
        except (EOFError, OSError) as e:
            self.close()
            code = self._exitcode()
            raise DecoderProcessError(f"the decoder process ended while starting (exit code {code})") from e
        if hello[0] != "ready":
            self.close()
            raise DecoderProcessError(f"the decoder process failed to start: {hello[1]}")
        self.decoder_name = str(hello[1])
        self._receiver = threading.Thread(target=self._receive, name="decoder-answers", daemon=True)
        self._receiver.start()
        return self

    def read(self, batch: int, paths: Sequence[str]) -> None:
        """Batch ``batch`` is cut: the child starts reading its files."""
        self._send(("read", batch, list(paths)))

    def decode(self, batch: int, slot: int | None = None) -> Future[Decoded]:
        """Decode batch ``batch`` (announced with :meth:`read`); its images go into the slot given here
        or later with :meth:`place`. Batches are decoded in the order of these calls."""
        fut: Future[Decoded] = Future()
        with self._lock:
            if self._error is not None:
                fut.set_exception(self._error)
                return fut
            self._futures[batch] = fut
        self._send(("decode", batch))
        if slot is not None:
            self.place(batch, slot)
        return fut

    def place(self, batch: int, slot: int) -> None:
        """Slot ``slot`` is free for the images of batch ``batch`` (asked for with :meth:`decode`)."""
        self._send(("place", batch, int(slot)))

    def replace_slot(self, slot: int, tensor: Any) -> None:
        """Slot ``slot`` is ``tensor`` from now on (a larger one). Only for a slot the worker holds free:
        the child is not decoding into it, and decodes into the new one from the next request on."""
        self.slots[slot] = tensor
        self._send(("slot", int(slot), tensor))

    def _send(self, msg: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                self._to_child.send(msg)
        except (OSError, ValueError) as e:
            raise DecoderProcessError(f"the decoder process is gone (exit code {self._exitcode()})") from e

    def _receive(self) -> None:
        err: BaseException | None = None
        try:
            while True:
                msg = self._from_child.recv()
                if msg[0] == "done":
                    with self._lock:
                        fut = self._futures.pop(msg[1].batch, None)
                    if fut is not None:
                        fut.set_result(msg[1])
                elif msg[0] == "failed":
                    err = DecoderProcessError(f"the decoder process failed: {msg[1]}")
                    break
        except (EOFError, OSError):
            if not self._closing:
                err = DecoderProcessError(f"the decoder process ended (exit code {self._exitcode()})")
        if err is None:
            err = DecoderProcessError("the decoder process was closed")
        with self._lock:
            self._error = err
            pending, self._futures = list(self._futures.values()), {}
        for fut in pending:
            fut.set_exception(err)

    def _exitcode(self) -> Any:
        if self._proc is None:
            return None
        self._proc.join(timeout=0.5)
        return self._proc.exitcode

    def close(self, timeout: float = 10.0) -> None:
        self._closing = True
        if self._to_child is not None:
            with contextlib.suppress(Exception):
                self._send(("stop",))
            with contextlib.suppress(Exception):
                self._to_child.close()
        if self._proc is not None:
            self._proc.join(timeout=timeout)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=5)
        if self._receiver is not None:
            self._receiver.join(timeout=5)
        if self._from_child is not None:
            with contextlib.suppress(Exception):
                self._from_child.close()


# -- the child ------------------------------------------------------------------------------------
@dataclass
class _Settings:
    """The decoder process's settings (see :class:`DecoderProcess`)."""

    decoder: str = "auto"
    chunk: int = 32
    readers: int = 4
    threads: int = 1
    backends: str = "auto"
    cpu_threads: int = 0
    max_file_bytes: int = 256 << 20  # larger files are refused unread (facefleet.engine.worker.read)


def child_main(requests: Any, answers: Any, slots: list[Any], settings: _Settings) -> None:
    """Entry point of the decoder process."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's
    try:
        import torch

        device = slots[0].device
        if device.type == "cuda":
            torch.cuda.set_device(device)
            from facefleet.io.gpu_decode import configure_nvimgcodec, jpeg_decoder

            configure_nvimgcodec(settings.backends, settings.cpu_threads)
            dec = jpeg_decoder(device, settings.decoder)
            name = dec.name if dec is not None else "Pillow (CPU)"
        else:
            name = "Pillow (CPU)"
        child = _Child(answers, slots, settings)
    except BaseException as e:
        with contextlib.suppress(Exception):
            answers.send(("failed", f"{type(e).__name__}: {e}"))
        os._exit(1)
    answers.send(("ready", name))
    code = 0
    try:
        child.run(requests)
    except BaseException as e:
        traceback.print_exc()
        with contextlib.suppress(Exception):
            answers.send(("failed", f"{type(e).__name__}: {e}"))
        code = 1
    # let go of the worker's slots (CUDA IPC counts the references of other processes: a child that
    # leaves without this makes the worker warn at its exit)
    child.slots.clear()
    slots.clear()
    del child
    import gc

    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Child:
    def __init__(self, answers: Any, slots: list[Any], settings: _Settings) -> None:
        import queue

        self.answers = answers
        self.send_lock = threading.Lock()  # decode threads answer through one pipe
        self.settings = settings
        self.slots = slots
        self.pool = ThreadPoolExecutor(max(1, settings.readers), thread_name_prefix="reader")
        self.reads: dict[int, list[tuple[str, Future[Any]]]] = {}  # per batch cut: its files' reads
        self.work: queue.Queue[Any] = queue.Queue()
        self.places: dict[int, int] = {}  # batch -> the slot its images go to (given by the worker)
        self.placed = threading.Condition()
        self.stopping = False

    def run(self, requests: Any) -> None:
        """Reads requests on this thread (reads start at once); decodes on ``threads`` others, each
        taking the next batch in order."""
        from facefleet.io.read import read_file

        workers = [
            threading.Thread(target=self._decode_loop, name=f"decode-{k}", daemon=True)
            for k in range(max(1, self.settings.threads))
        ]
        for w in workers:
            w.start()
        try:
            while True:
                try:
                    msg = requests.recv()
                except (EOFError, OSError):  # the worker is gone
                    break
                if msg[0] == "read":
                    self.reads[msg[1]] = [
                        (p, self.pool.submit(read_file, p, self.settings.max_file_bytes)) for p in msg[2]
                    ]
                elif msg[0] == "decode":
                    self.work.put((msg[1], self.reads.pop(msg[1])))
                elif msg[0] == "place":
                    with self.placed:
                        self.places[msg[1]] = msg[2]
                        self.placed.notify_all()
                elif msg[0] == "slot":  # a larger slot (sent before the slot is placed again)
                    self.slots[msg[1]] = msg[2]
                elif msg[0] == "stop":
                    break
        finally:
            with self.placed:
                self.stopping = True
                self.placed.notify_all()
            for _ in workers:
                self.work.put(None)
            for w in workers:
                w.join()
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self._failure is not None:
            raise self._failure

    _failure: BaseException | None = None

    def _decode_loop(self) -> None:
        try:
            device = self.slots[0].device
            if device.type == "cuda":  # a stream per decode thread: their batches overlap on the device
                import torch

                with torch.cuda.stream(torch.cuda.Stream(device)):
                    self._decode_jobs()
            else:
                self._decode_jobs()
        except BaseException as e:  # reported by run(), which then ends the process
            self._failure = e
            with contextlib.suppress(Exception), self.send_lock:
                self.answers.send(("failed", f"{type(e).__name__}: {e}"))

    def _decode_jobs(self) -> None:
        while True:
            job = self.work.get()
            if job is None:
                return
            batch, reads = job
            done = self._decode(batch, reads)
            if done is None:  # stopping before the batch had a slot
                return
            try:
                with self.send_lock:
                    self.answers.send(("done", done))
            except OSError:  # the worker stopped listening (it is ending): nothing to report
                return

    def _slot_for(self, batch: int) -> Any:
        """The slot the worker placed ``batch`` in (waits for it); None when the child is stopping."""
        with self.placed:
            while batch not in self.places and not self.stopping:
                self.placed.wait()
            if batch not in self.places:
                return None
            return self.slots[self.places.pop(batch)]

    def _decode(self, batch: int, reads: list[tuple[str, Future[Any]]]) -> Decoded | None:
        """Batch ``batch``: its files' ``reads``, decoded into the slot the worker places it in."""
        import torch

        sources = [p for p, _ in reads]
        items: list[tuple[Any, ...] | None] = [None] * len(sources)
        blobs: list[bytes] = []
        at: list[int] = []
        read_s = 0.0
        for k, (path, fut) in enumerate(reads):
            data, secs = fut.result()
            read_s += secs
            if isinstance(data, BaseException):
                items[k] = ("error", _as_decode_error(path, data))
            else:
                blobs.append(data)
                at.append(k)
        t0 = time.perf_counter()
        slot = self._slot_for(batch)  # decoded straight into the slot, once the worker has freed one
        if slot is None:
            return None
        slot_wait_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        device = slot.device
        place = _Placer(slot, items)
        if blobs:
            place.decoded(self._gpu_decode(blobs, [sources[k] for k in at], device, slot), at, blobs)
        decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        done: list[tuple[Any, ...]] = []
        for it in items:
            assert it is not None
            done.append(it)
        dev_bytes = 0
        if device.type == "cuda":
            from facefleet.io.gpu_decode import decoder_memory_bytes

            dev_bytes = torch.cuda.max_memory_allocated(device) + decoder_memory_bytes()
        copy_s = time.perf_counter() - t0
        return Decoded(
            batch, done, place.stacked(), read_s, decode_s, dev_bytes, place.needed, copy_s, slot_wait_s
        )

    def _gpu_decode(self, blobs: list[bytes], names: list[str], device: Any, slot: Any) -> Any:
        import torch

        from facefleet.io.gpu_decode import decode_images

        got = decode_images(
            blobs,
            names,
            device,
            decoder=self.settings.decoder,
            stack=True,
            chunk=self.settings.chunk,
            arena=slot,
        )
        if device.type == "cuda":  # decoded, not just queued: the stages time decoding and copying apart
            torch.cuda.current_stream(device).synchronize()
        return got


class _Placer:
    """Puts one batch's decoded images into its slot and keeps ``items`` (per file: where it lies)."""

    def __init__(self, slot: Any, items: list[tuple[Any, ...] | None]) -> None:
        self.slot = slot
        self.items = items
        self.off = 0  # the slot's bytes in use
        self.needed = 0  # what the batch would need (the worker grows a slot that was too small)
        # while the images so far are rows of one stack from offset 0: their shape, bytes and count
        self.shape: tuple[int, ...] | None = None
        self.per = 0
        self.rows = 0

    def decoded(self, got: Any, at: list[int], blobs: list[bytes]) -> None:
        """``decode_images``' result for the files ``at`` (whose bytes are ``blobs``), once per batch."""
        from facefleet.io.decode import ImageDecodeError

        stack = got.stack
        if stack is not None and stack.data_ptr() == self.slot.data_ptr():
            # the usual batch: every file decoded in place, one image after the other
            per = int(stack[0].numel())
            shape = tuple(int(s) for s in stack.shape[1:])
            for j, k in enumerate(at):
                self.items[k] = ("slot", j * per, shape)
            self.needed = _aligned(len(at) * per)
            return
        for j, (k, t) in enumerate(zip(at, got.items, strict=True)):
            if isinstance(t, ImageDecodeError):
                self.items[k] = ("error", t)
            elif not self._put(k, t):
                self.items[k] = ("encoded", blobs[j])  # does not fit: the worker decodes it

    def _put(self, k: int, image: Any) -> bool:
        """Copy ``image`` (3, h, w) into the slot after what is there; False when it does not fit."""
        n = int(image.numel())
        shape = tuple(int(s) for s in image.shape)
        if self.off == 0:
            self.shape, self.per, self.rows = shape, n, 0
        row = shape == self.shape and self.off == _aligned(self.rows * self.per)
        at = self.rows * self.per if row else self.off  # the stack's next row while there is one
        self.needed += _aligned(n)
        if at + n > int(self.slot.numel()):
            return False
        self.slot[at : at + n].view(shape).copy_(image)
        self.items[k] = ("slot", at, shape)
        self.rows += 1 if row else 0
        self.off = _aligned(at + n)
        return True

    def stacked(self) -> bool:
        """Every file in the slot, same size, one after the other from offset 0, in order (the worker
        then views them as one ``(B, 3, H, W)`` tensor)."""
        first = self.items[0] if self.items else None
        if first is None or first[0] != "slot":
            return False
        shape = first[2]
        per = shape[0] * shape[1] * shape[2]
        return all(
            it is not None and it[0] == "slot" and it[1] == k * per and it[2] == shape
            for k, it in enumerate(self.items)
        )


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _as_decode_error(path: str, e: BaseException) -> Any:
    """A picklable error with the manifest's wording (``ImageDecodeError.reason``)."""
    from facefleet.engine.worker.errors import error_text
    from facefleet.io.decode import ImageDecodeError

    return e if isinstance(e, ImageDecodeError) else ImageDecodeError(path, error_text(e))
