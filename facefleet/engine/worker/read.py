"""Read/decode stage: a unit's files read and decoded into batches for the networks.

The batcher thread cuts the claimer's stream of items into batches (never across units) and decodes
up to ``spec.decoders`` batches at once; the networks receive them in order, as futures. On CUDA the
files are read and decoded in a child process (:mod:`.decode_proc`) straight into slots of device
memory the worker shares with it (CUDA IPC; shared memory on the CPU), so that no thread of the worker
takes the GIL the networks' thread needs; a child that cannot start leaves the worker on threads:
reads on the claimer's reader pool, JPEGs decoded on the device (nvJPEG / nvImageCodec) on a stream of
each decoder thread, other formats with Pillow. A slot that was too small for a batch grows.

Only regular files are read, and none larger than ``spec.run.max_file_bytes``
(:func:`facefleet.io.read.read_source`): a named pipe or a device would block its reader, a huge file
would be read whole into memory.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from facefleet.engine.worker.base import (
    STOP,
    Abort,
    Batch,
    End,
    UnitState,
    WorkerBase,
    add_time,
    check_shared_memory,
)
from facefleet.io.read import read_file


class ProcBatch:
    """A batch in the decoder process: ``result()`` waits for it and views its images in the slot."""

    def __init__(self, worker: ReadStage, pending: list[Any], slot: int, fut: Future[Any]) -> None:
        self.worker, self.pending, self.slot, self.fut = worker, pending, slot, fut

    def result(self) -> Batch:
        import math

        w = self.worker
        try:
            d = self.fut.result()
        except BaseException:
            w._arena_free.put(self.slot)
            raise
        state: UnitState = self.pending[0][0]
        index = [p[1] for p in self.pending]
        sources = [p[2] for p in self.pending]
        arena = w._arenas[self.slot]
        add_time(state.stages, "read", d.read_seconds)
        add_time(state.stages, "decode", d.decode_seconds)
        add_time(state.stages, "slot_copy", d.copy_seconds)
        add_time(state.stages, "slot_wait", d.slot_wait_seconds)
        stack = None
        items: list[Any]
        if d.stacked:
            shape = d.items[0][2]
            stack = arena[: len(d.items) * math.prod(shape)].view(len(d.items), *shape)
            items = list(stack.unbind(0))
        else:
            items = []
            encoded: list[int] = []
            for k, it in enumerate(d.items):
                if it[0] == "slot":
                    items.append(arena[it[1] : it[1] + math.prod(it[2])].view(it[2]))
                elif it[0] == "encoded":
                    items.append(None)
                    encoded.append(k)
                else:
                    items.append(it[1])
            if encoded:  # larger than what was left of the slot: decoded here, in device memory of its own
                from facefleet.io.gpu_decode import decode_images

                got = decode_images(
                    [d.items[k][1] for k in encoded],
                    [sources[k] for k in encoded],
                    w.device,
                    decoder=w.spec.profile.decoder,
                    chunk=w.spec.profile.decode_chunk,
                )
                for k, t in zip(encoded, got.items, strict=True):
                    items[k] = t
        return Batch(
            state, index, sources, items, stack,
            arena=self.slot, child_bytes=d.device_bytes, arena_need=d.needed,
            decode_s=d.decode_seconds, slot_wait_s=d.slot_wait_seconds,
        )  # fmt: skip


class ReadStage(WorkerBase):
    """The batcher thread, its decoders, and the decoder process with its slots."""

    def _start_decoder_process(self) -> None:
        """Slots of device memory (one per batch in flight, sized for ``batch_size`` 1080p frames) and
        the child that reads and decodes into them; it starts now and finishes setting up while the
        networks warm up (:meth:`_device_stage` waits for it). Failing that: threads, with a warning."""
        from facefleet.engine.worker.decode_proc import DecoderProcess

        p = self.spec.profile
        cap = self.batch_size * 3 * 1088 * 1920  # larger images than that go back encoded, decoded here
        try:
            slots = max(1, p.batches_in_flight)
            if self.device.type == "cpu":
                check_shared_memory(slots * cap, "the decoder process's slots")
            self._arenas = [self._new_arena(cap) for _ in range(slots)]
            self._proc = DecoderProcess(
                self._arenas,
                decoder=p.decoder,
                chunk=p.decode_chunk,
                readers=self.spec.readers,
                threads=p.decode_threads,
                backends=p.decode_backends,
                cpu_threads=p.decode_cpu_threads,
                max_file_bytes=self.spec.run.max_file_bytes,
            ).start()
        except Exception as e:
            self._decoder_process_failed(e)

    def _new_arena(self, size: int) -> Any:
        """A decode slot of ``size`` bytes on the worker's device; on the CPU (tests) in shared memory
        rather than CUDA IPC (checked for room by the caller)."""
        import torch

        arena = torch.empty(size, dtype=torch.uint8, device=self.device)
        return arena.share_memory_() if self.device.type == "cpu" else arena

    def _decoder_process_failed(self, e: BaseException) -> None:
        print(
            f"facefleet worker {self.spec.name}: no decoder process ({type(e).__name__}: {e}); "
            "reading and decoding on threads of the worker",
            file=sys.stderr,
        )
        if self._proc is not None:
            self._proc.close()
        self._proc = None
        self._arenas = []

    def _batcher(self) -> None:
        """Cuts the read stream into batches and decodes up to ``spec.decoders`` batches at once;
        the device stage receives them in order (futures), so unit boundaries stay in place."""
        pending: list[tuple[UnitState, int, str, Future[Any]]] = []
        per_image = ThreadPoolExecutor(max(1, self.spec.readers), thread_name_prefix="decoder")
        gpu = self.device.type == "cuda"
        # on CUDA at most batches_in_flight - 1 batches decode while one is on the networks: more decoder
        # threads would only wait for a slot (and each GPU decoder thread keeps its own buffers)
        in_flight = self.spec.profile.batches_in_flight
        threads = max(1, min(self.spec.decoders, in_flight - 1) if gpu else self.spec.decoders)
        batches = ThreadPoolExecutor(threads, thread_name_prefix="batch-decoder")

        def submit(batch: list[Any]) -> None:
            if self._proc is not None:  # the decoder process reads and decodes now, fills a slot once free
                no = self._batch_no
                self._batch_no += 1
                self._proc.read(no, [p[2] for p in batch])
                fut = self._proc.decode(no)
                slot = self._get(self._arena_free)
                self._proc.place(no, slot)
                self._put(self._gpu_q, ProcBatch(self, batch, slot, fut))
                return
            if gpu:  # device memory for it, taken in batch order (so no later batch can starve it)
                while not self._slots.acquire(timeout=0.2):
                    if self._fatal is not None:
                        raise Abort()
            self._put(self._gpu_q, batches.submit(self._decode, batch, per_image, gpu))

        try:
            while True:
                item = self._get(self._read_q)
                if item is STOP or isinstance(item, End):
                    if pending:
                        submit(pending)
                        pending = []
                    self._put(self._gpu_q, item)
                    if item is STOP:
                        return
                    continue
                pending.append(item)
                if len(pending) >= self.batch_size:
                    submit(pending)
                    pending = []
        except Abort:
            pass
        finally:
            batches.shutdown(wait=True)
            per_image.shutdown(wait=False, cancel_futures=True)

    def _decode(self, pending: list[Any], pool: ThreadPoolExecutor, slot: bool = False) -> Batch:
        """Wait for the reads of a batch and decode it: (3, H, W) uint8 tensors on the device.
        ``slot``: the batcher took a device-memory slot for it (passed on to the batch)."""
        import torch

        from facefleet.io.decode import decode_image

        state: UnitState = pending[0][0]
        index = [p[1] for p in pending]
        sources = [p[2] for p in pending]
        items: list[Any] = [None] * len(pending)
        blobs: list[bytes] = []
        blob_at: list[int] = []
        read_s = 0.0
        for k, (_, _, path, fut) in enumerate(pending):
            # no read future: queued for a decoder process that then failed to start
            data, secs = fut.result() if fut is not None else read_file(path, self.spec.run.max_file_bytes)
            read_s += secs
            if isinstance(data, BaseException):
                items[k] = data
            else:
                blobs.append(data)
                blob_at.append(k)
        add_time(state.stages, "read", read_s)
        if self.device.type == "cuda" and blobs:
            from facefleet.io.gpu_decode import decode_images

            t0 = time.perf_counter()
            # each decoder thread decodes on its own stream, so decoding overlaps the networks
            stream = getattr(self._local, "stream", None)
            if stream is None:
                stream = self._local.stream = torch.cuda.Stream(self.device)
            try:
                with torch.cuda.stream(stream):
                    decoded = decode_images(
                        blobs,
                        [sources[k] for k in blob_at],
                        self.device,
                        decoder=self.spec.profile.decoder,
                        stack=True,
                        chunk=self.spec.profile.decode_chunk,
                    )
                    ready = torch.cuda.Event()
                    ready.record(stream)
            except BaseException:
                if slot:
                    self._slots.release()
                raise
            for k, out in zip(blob_at, decoded.items, strict=True):
                items[k] = out
            stack = decoded.stack if len(blob_at) == len(items) else None
            secs = time.perf_counter() - t0
            add_time(state.stages, "decode", secs)
            return Batch(state, index, sources, items, stack, ready, slot=slot, decode_s=secs)
        if slot:  # nothing of it reaches device memory
            self._slots.release()
        t0 = time.perf_counter()
        if blobs:

            def dec(k_data: tuple[int, bytes]) -> Any:
                k, data = k_data
                try:
                    return torch.from_numpy(decode_image(data, sources[k])).permute(2, 0, 1)
                except Exception as e:
                    return e

            for k, out in zip(blob_at, pool.map(dec, zip(blob_at, blobs, strict=False)), strict=False):
                items[k] = out
        # batched here, on this thread, rather than by the pipeline on the device thread (one copy of
        # every image either way; the networks' thread has the cores' work to do)
        from facefleet.detect.views import stack_rows

        items, stack = stack_rows(items)
        secs = time.perf_counter() - t0
        add_time(state.stages, "decode", secs)
        return Batch(state, index, sources, items, stack, decode_s=secs)

    def _free_after(self, event: Any, slot: int, need: int) -> None:
        event.synchronize()
        self._free_arena(slot, need)

    def _free_arena(self, slot: int, need: int) -> None:
        """Slot ``slot`` back to the batcher; first made large enough for a batch like the last one,
        whose images did not all fit (photos larger than the 1080p frames it was sized for: the
        overflow is decoded on the device thread, slowly). Growing is best effort: without the memory
        the slot stays as it is."""
        old = self._arenas[slot]
        if need > old.numel() and self._proc is not None:
            size = -(-int(need * 1.1) // (64 << 20)) * (64 << 20)
            try:
                if self.device.type == "cpu":
                    check_shared_memory(size, "a larger decode slot")
                new = self._new_arena(size)
                self._proc.replace_slot(slot, new)
                self._arenas[slot] = new
            except Exception as e:  # out of (shared) memory, or the child could not map it
                if not self._grow_warned:
                    self._grow_warned = True
                    print(
                        f"facefleet worker {self.spec.name}: cannot grow a decode slot to {size >> 20} MiB "
                        f"({type(e).__name__}: {e}); larger images are decoded on the networks' thread",
                        file=sys.stderr,
                    )
        self._arena_free.put(slot)
