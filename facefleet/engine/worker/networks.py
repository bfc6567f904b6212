"""Networks stage: decoded batches through the reconstructor on the worker's device.

One thread (``[gpu] network_threads``: several, each with a CUDA stream of its own) takes batches
in order (:class:`~facefleet.engine.worker.base.InOrder`), waits for their decoding, runs the
networks, frees the batch's device memory for the next one to decode into, and passes the results on
to the sink in the order the batches were taken. Before the first batch the networks warm up (cuDNN
plans, CUDA-graph captures) while the claimer reads the first files; the decoders start after it.

Failures: CUDA out-of-memory halves the batch (and lowers the batch size for the rest of the run);
an exception on a batch is narrowed down by halves to the failing image, which gets an error row;
an error that leaves the device unusable, or an import error, is the worker's and ends it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import threading
import time
from typing import Any

from facefleet.engine.worker.base import STOP, Abort, Batch, End, add_time
from facefleet.engine.worker.errors import device_broken, error_text
from facefleet.engine.worker.read import ReadStage
from facefleet.engine.worker.startup import compile_folder, finish_compile, start_compile
from facefleet.types import ImageResult


class NetworksStage(ReadStage):
    """The networks' threads (on the read stage, whose slots they free)."""

    def _device_stage(self) -> None:
        if self._decoder_setup is not None:
            self._decoder_setup.join()
        warm = getattr(self._rec, "warmup", None)
        where = None
        if self.device.type == "cuda" and callable(warm):
            # cuDNN plans and CUDA-graph captures, while the claimer reads the first files; the
            # decoders start after it, so no other thread uses the device during the captures.
            # Eager start: this reconstructor is the eager one (cuDNN plans only: seconds), the
            # compiled one is built afterwards on a thread of its own (startup.BackgroundCompile)
            from facefleet.io.gpu_decode import jpeg_decoder

            folder = compile_folder(self.spec) if self._compiling is None else None
            t0 = time.perf_counter()
            loaded = start_compile(folder)
            warm()
            compiled = any(getattr(net, "compiled", False) for net in self._networks_of(self._rec))
            finish_compile(folder, compiled)
            dec = jpeg_decoder(self.device, self.spec.profile.decoder)  # set up already: cached
            kind = "eager networks (compiled ones building)" if self._compiling is not None else "networks"
            where = f"{kind} ready in {time.perf_counter() - t0:.1f} s"
            where += f" ({time.perf_counter() - self.started:.1f} s after launch"
            where += ", compile artifacts loaded), " if loaded else "), "
            where += "JPEG decoder " + (dec.name if dec is not None else "Pillow (CPU)")
        if self._proc is not None:
            try:
                child = self._proc.wait_ready().decoder_name
                where = f"{where}; " if where else ""
                where += f"reading and decoding in a child process ({child})"
                for k in range(len(self._arenas)):
                    self._arena_free.put(k)
            except Exception as e:
                self._decoder_process_failed(e)
        if where:
            print(f"facefleet worker {self.spec.name}: {where}", file=sys.stderr)
        # everything allocated so far (torch, the compiled networks: ~750,000 objects) stays for the
        # whole run: out of the cyclic collector's sight, whose full passes over it took ~0.4 s each
        gc.collect()
        gc.freeze()
        if self._compiling is not None:
            self._compiling.start()
        if self._sampler is not None:
            self._sampler.start()
        if self._batcher_thread is not None and self._batcher_thread.ident is None:
            self._batcher_thread.start()
        # network_threads > 1: threads each taking the next batch, so that on CUDA one queues its kernels
        # while another waits for the device; results go on in the order the batches were taken
        n = max(1, self.spec.profile.network_threads)
        others = [
            threading.Thread(
                target=self._guard(functools.partial(self._networks, k)), name=f"networks-{k}", daemon=True
            )
            for k in range(1, n)
        ]
        for t in others:
            t.start()
        try:
            self._networks(0)
        except Abort:
            pass
        finally:
            for t in others:
                t.join()
            if self._window is not None:
                self._window.finish()

    def _networks(self, k: int) -> None:
        """One networks' thread (``k``: its number) with a CUDA stream of its own: on the legacy default
        stream every kernel would also wait for (and hold up) the blocking streams and synchronous copies
        of other threads, such as those of the JPEG decoder libraries."""
        import torch

        own = torch.cuda.stream(torch.cuda.Stream(self.device)) if self.device.type == "cuda" else None
        try:
            with own if own is not None else contextlib.nullcontext():
                self._device_loop(profile=k == 0)
        except Abort:
            pass

    def _device_loop(self, profile: bool = True) -> None:
        """Batches from the decoders through the networks to the writer, until the end of the input.
        ``profile``: this thread's batches drive the window profiler (one thread of several)."""
        import torch

        from facefleet.io.gpu_decode import decoder_memory_bytes

        while True:
            # what this thread waits for, per unit: the next decoded batch ("wait_input": reading and
            # decoding are the bound) and room downstream ("wait_writers": the file writers are)
            if self._compiling is not None:
                self._take_compiled()  # between batches: the compiled networks take over when built
            t_wait = time.perf_counter()
            ticket, item = self._order.take()
            if item is STOP or isinstance(item, End):
                self._order.pass_on(ticket, item)
                if item is STOP:
                    return
                continue
            if profile and self._window is not None:
                self._window.batch_starts()
            batch: Batch = item.result()  # a decode future (decoding failures are per image)
            t_got = time.perf_counter()
            waited = t_got - t_wait
            add_time(batch.state.stages, "wait_input", waited)
            if batch.ready is not None:  # decoded on another stream: order, and keep memory alive
                current = torch.cuda.current_stream(self.device)
                current.wait_event(batch.ready)
                for t in [batch.stack] if batch.stack is not None else batch.items:
                    if isinstance(t, torch.Tensor):
                        t.record_stream(current)
            ring = None if self._ring is None else self._take_ring_slot()
            t0 = time.perf_counter()
            add_time(batch.state.stages, "wait_writers", t0 - t_got)
            self._busy.start(ticket)
            try:
                out = None if ring is None else self._ring.views[ring]
                results = self._reconstruct(batch, out)
            except BaseException:
                if ring is not None:
                    self._ring.release(ring)
                raise
            finally:
                self._drop_device_images(batch)
            batch.ring = ring
            secs = time.perf_counter() - t0
            busy = self._busy.stop(ticket)
            batch.state.batch_seconds.append(secs)
            if self.device.type == "cuda":
                # the JPEG decoder's own buffers are outside torch's allocator
                peak = (
                    torch.cuda.max_memory_allocated(self.device) + decoder_memory_bytes() + batch.child_bytes
                ) / 2**20
                batch.state.stages["_peak_mib"] = max(batch.state.stages.get("_peak_mib", 0.0), peak)
            with self._progress_lock:
                batch.state.busy += busy
                now = time.time()
                batch.state.batch_done.append((now, len(results)))
                row = (now, batch.decode_s, batch.slot_wait_s, waited, secs)  # BATCH_STAGES
                batch.state.batch_stages.append(row)
                self._progress[0] += len(results)
                self._progress[1] += sum(len(r.faces) for r in results)
                self._progress[2] += sum(r.error is not None for r in results)
                self._progress[3] += busy
            if self._compiling is not None:
                self._eager_batches += 1
            if self._batch_count == 0 and self.device.type == "cuda":
                self._first_batch_s = time.perf_counter() - self.started
                self._say(f"first batch done {self._first_batch_s:.1f} s after launch")
            self._batch_count += 1
            t_put = time.perf_counter()
            self._order.pass_on(ticket, (batch, results))  # after the batches taken before it
            add_time(batch.state.stages, "wait_writers", time.perf_counter() - t_put)

    @staticmethod
    def _networks_of(rec: Any) -> list[Any]:
        """The reconstructor's networks (none for a custom reconstructor without ``networks()``)."""
        nets = getattr(rec, "networks", None)
        return list(nets()) if callable(nets) else []

    def _say(self, text: str) -> None:
        print(f"facefleet worker {self.spec.name}: {text}", file=sys.stderr, flush=True)

    def _take_compiled(self) -> None:
        """Eager start, between two batches of the (one) networks' thread: once the background build
        has ended, capture the compiled networks' CUDA graphs and run on them from now on; a failed
        build or capture leaves the worker on the eager networks (one warning line)."""
        built = None if self._compiling is None else self._compiling.take()
        if built is None:
            return
        self._compiling = None
        eager = f"after {self._eager_batches} batches on eager networks"
        if built.error is not None:
            self._stay_eager("compiling the networks", built.error, built.seconds)
            return
        t0 = time.perf_counter()
        try:
            built.rec.warmup()  # the CUDA-graph captures of the compiled code (found in torch's caches)
        except Exception as e:
            if device_broken(e):
                raise
            self._stay_eager("capturing compiled networks", e, built.seconds)
            return
        self._rec = built.rec
        gc.freeze()  # the compiled code stays for the whole run, like everything before it
        note = ", compile artifacts loaded" if built.artifacts_loaded else ""
        took_over = time.perf_counter() - self.started
        self._say(
            f"compiled networks took over {took_over:.1f} s after launch "
            f"(built in {built.seconds:.1f} s{note}, captured in {time.perf_counter() - t0:.1f} s), {eager}"
        )
        self._startup_event(took_over, built.seconds, None)

    def _stay_eager(self, doing: str, e: BaseException, built_s: float) -> None:
        """``doing`` failed with ``e``: one warning line, and the start-up event says so."""
        first = str(e).splitlines()[0] if str(e) else ""
        self._say(f"warning: {doing} failed ({type(e).__name__}: {first}); staying on eager")
        self._startup_event(None, built_s, f"{type(e).__name__}: {first}")

    def _startup_event(self, took_over: float | None, built_s: float, error: str | None) -> None:
        """A ``worker_startup`` event in the queue (the coordinator's event log keeps it): seconds from
        launch to the first batch and to the compiled networks' takeover (None: they did not), the
        build's seconds, the batches run eagerly, the build's error."""
        if self._queue is None:
            return
        data = {
            "worker": self.spec.name,
            "device": self.spec.profile.device,
            "first_batch_s": None if self._first_batch_s is None else round(self._first_batch_s, 3),
            "compiled_s": None if took_over is None else round(took_over, 3),
            "compile_build_s": round(built_s, 3),
            "eager_batches": self._eager_batches,
            "error": error,
        }
        try:
            self._queue.add_event("worker_startup", data)
        except Exception as e:  # a note only: the queue's own errors surface on its next real use
            self._say(f"warning: start-up event not recorded ({type(e).__name__})")

    def _take_ring_slot(self) -> int:
        """A free texture slot (waits for the writer processes to be done with one)."""
        while True:
            if self._fatal is not None:
                raise Abort()
            slot = self._ring.take(0.2)
            if slot is not None:
                return int(slot)

    def _drop_device_images(self, batch: Batch) -> None:
        """The networks are done with the batch: its device images go and its memory slot is free
        for the next batch to decode into. Overlays need the images on the host: they are copied into
        pinned memory asynchronously (the writer waits for ``batch.host_ready``), so this thread does
        not wait for the copies (0.8 GB per batch of 128 1080p frames)."""
        import torch

        if self.keep_images:
            items: list[Any] = []
            copied = False
            for t in batch.items:
                if isinstance(t, torch.Tensor) and t.device.type == "cuda":
                    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                    host.copy_(t, non_blocking=True)  # on this stream: the memory is reused after it
                    t, copied = host, True
                elif isinstance(t, torch.Tensor) and batch.arena is not None:
                    t = t.clone()  # a view of a slot that the decoder process is about to rewrite
                items.append(t)
            if copied:
                batch.host_ready = torch.cuda.Event()
                batch.host_ready.record()
            batch.items = items
        else:
            batch.items = [t if isinstance(t, BaseException) else None for t in batch.items]
        batch.stack = None
        if batch.slot:
            batch.slot = False
            self._slots.release()
        if batch.arena is not None:
            # the slot is rewritten by the decoder process as soon as it is back: after this stream's
            # reads of it (and the overlays' copies out of it) are done; nearly always already
            slot, batch.arena = batch.arena, None
            if self.device.type != "cuda":
                self._free_arena(slot, batch.arena_need)
                return
            done = torch.cuda.Event()
            done.record()
            if done.query():
                self._free_arena(slot, batch.arena_need)
            else:
                free = functools.partial(self._free_after, done, slot, batch.arena_need)
                threading.Thread(target=self._guard(free), name="slot-release", daemon=True).start()

    def _reconstruct(self, batch: Batch, texture_out: Any = None) -> list[ImageResult]:
        """One result per batch item, in order; per-image failures become error results."""
        out: list[ImageResult | None] = [None] * len(batch.items)
        ok: list[int] = []
        for k, it in enumerate(batch.items):
            if isinstance(it, BaseException):
                out[k] = ImageResult(batch.sources[k], 0, 0, error=error_text(it))
            else:
                ok.append(k)
        if ok:
            tensors: Any = [batch.items[k] for k in ok]
            if batch.stack is not None and len(ok) == len(batch.stack):
                tensors = batch.stack
            elif self.device.type == "cuda" and tensors[0].device.type == "cpu":
                # pinned host memory -> asynchronous copy (host copies stay in batch.items for overlays)
                tensors = [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]
            timings = batch.state.stages if self.spec.run.stage_timings else None
            done = self._infer(tensors, [batch.sources[k] for k in ok], timings, texture_out)
            for k, r in zip(ok, done, strict=False):
                out[k] = r
        return [r for r in out if r is not None]

    def _infer(
        self,
        tensors: list[Any],
        sources: list[str],
        timings: dict[str, float] | None,
        texture_out: Any = None,
    ) -> list[ImageResult]:
        """Results of a batch; narrowed down on failures (halves, without ``texture_out``: each half would
        write its textures at its start)."""
        import torch

        try:
            kw: dict[str, Any] = {"texture": self.texture, "timings": timings}
            if texture_out is not None:
                kw["texture_out"] = texture_out
            return list(self._rec.reconstruct_tensors(tensors, sources, **kw))
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(tensors) == 1:
                h, w = int(tensors[0].shape[-2]), int(tensors[0].shape[-1])
                return [
                    ImageResult(sources[0], w, h, error=f"out of device memory on {self.device} ({w}x{h})")
                ]
            half = len(tensors) // 2
            if half < self.batch_size:
                self.batch_size = max(1, half)
                print(
                    f"facefleet worker {self.spec.name}: out of memory on {self.device}, "
                    f"batch size lowered to {self.batch_size}",
                    file=sys.stderr,
                )
            return self._infer(tensors[:half], sources[:half], timings) + self._infer(
                tensors[half:], sources[half:], timings
            )
        except Exception as e:
            if device_broken(e) or isinstance(e, ImportError):  # the worker, not the image, is broken
                raise
            if len(tensors) == 1:
                h, w = int(tensors[0].shape[-2]), int(tensors[0].shape[-1])
                return [
                    ImageResult(sources[0], w, h, error=f"reconstruction failed: {type(e).__name__}: {e}")
                ]
            half = len(tensors) // 2
            return self._infer(tensors[:half], sources[:half], timings) + self._infer(
                tensors[half:], sources[half:], timings
            )
