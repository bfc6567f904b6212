"""One worker process: claims units from the queue and runs them through an overlapped pipeline.

Threads and bounded queues (backpressure at every step)::

    claimer ──(path, read future)──▶ batcher/decoder ──batch──▶ device stage ──results──▶ writer
      │ reader pool: bytes              decode (nvJPEG / Pillow)   Reconstructor        per-image files (pool)
      │                                                                                     │ finished units
      │                                               finisher: wait for files, flush, unit Parquet, done
    heartbeat thread: extends this worker's leases, flushes progress counters

On CUDA, reading and decoding run in a child process instead (``[gpu] decode_process``, default on;
:mod:`facefleet.engine.decode_proc`): the batcher sends it each batch's paths and a free slot of device
memory the worker shares with it, so no thread of the worker process reads or decodes (each would
take the GIL the device thread needs for every torch call: 56-59 ms per batch of 128 beside such a
thread against 32-40 ms alone, H200). A child that cannot start leaves the worker on threads.

Batches never span units; a unit is marked done only after its Parquet file is written. CUDA
out-of-memory halves the batch (and lowers the batch size for the rest of the run); an exception
on a batch is narrowed down to the failing image, which gets an error row. A CUDA error that
leaves the device unusable ends the process (exit 1): the coordinator gives its units back and
starts a new worker.

This module does not import torch at import time (spawned children set thread counts first).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import importlib
import os
import queue as queue_mod
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facefleet.engine.queue import QUEUE_FILE, Unit, WorkQueue, open_queue
from facefleet.hardware import DeviceProfile
from facefleet.types import ImageResult

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_OUTPUT = 3  # OUT cannot be written (disk full, read-only, permission): restarting won't help

_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
TEXTURE_FORMATS = frozenset({"png", "obj", "glb"})
PROCESS_FORMATS = TEXTURE_FORMATS | {"overlay"}  # written by a process pool on GPU workers


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs (picklable: it crosses a spawn boundary)."""

    name: str
    out_dir: str
    profile: DeviceProfile
    formats: tuple[str, ...] = ()
    input_root: str | None = None
    lease_seconds: float = 30.0
    max_attempts: int = 3
    model_dir: str | None = None
    texture_size: int = 512
    reconstructor: str | None = None  # "module:callable"; default facefleet.pipeline.Reconstructor
    reconstructor_kwargs: dict[str, Any] = field(default_factory=dict)
    readers: int = 4
    # batches decoded at once (on CUDA at most profile.batches_in_flight - 1; on CPU each batch uses
    # `readers` threads)
    decoders: int = 2
    writers: int = 2
    file_processes: bool | None = None  # per-image files in processes (None: on GPU workers, see _file_pool)
    coordinator_pid: int | None = None
    stage_timings: bool = True  # per-stage seconds (CUDA events on GPUs: no extra synchronisation)
    poll_seconds: float = 0.25

    @property
    def queue_path(self) -> Path:
        return Path(self.out_dir) / QUEUE_FILE


def visible_device(device: str) -> str:
    """CUDA_VISIBLE_DEVICES entry for ``cuda:N`` as the coordinator numbers devices (which
    already honours the coordinator's own CUDA_VISIBLE_DEVICES)."""
    idx = int(device.split(":")[1])
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent:
        ids = [p.strip() for p in parent.split(",") if p.strip()]
        if idx < len(ids):
            return ids[idx]
    return str(idx)


def owner_id(name: str, pid: int) -> str:
    """Lease owner of one worker incarnation."""
    return f"{socket.gethostname()}:{pid}:{name}"


def worker_main(spec: WorkerSpec) -> None:
    """Process entry point (spawn target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's: it drains us
    local = spec.profile.device
    if local == "cpu":
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(spec.profile.threads)
    else:
        # This process sees only its GPU (as cuda:0): no stray CUDA contexts on other GPUs from
        # pinned memory, decoders or library handles created on "the current device".
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_device(spec.profile.device)
        # torch.compile (the networks' graphs, the crop gather) compiles in this process rather than in a
        # pool of one compiler process per core: on a 16-core H200 host with that pool a run's processes
        # held 9.7 GB of host memory with one worker (18.9 GB with two) for the whole run; compiled code
        # is cached on disk after the first run
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        local = "cuda:0"
    code = EXIT_ERROR
    try:
        code = Worker(spec, local_device=local).run()
    except OutputError as e:
        print(f"facefleet worker {spec.name}: error: {e}", file=sys.stderr, flush=True)
        code = EXIT_OUTPUT
    except BaseException:
        print(f"facefleet worker {spec.name} ({spec.profile.device}) failed:", file=sys.stderr)
        traceback.print_exc()
        code = EXIT_ERROR
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class OutputError(OSError):
    """OUT cannot be written (disk full, read-only file system, permission)."""


@dataclass
class _UnitState:
    unit: Unit
    t0: float
    results: list[ImageResult | None]
    images: list[Any]
    stages: dict[str, float] = field(default_factory=dict)
    files: list[tuple[int, Future[Any]]] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)
    busy: float = 0.0  # the networks' busy time spent on the unit (shared among overlapping batches)
    batch_stages: list[tuple[float, ...]] = field(default_factory=list)  # per batch: BATCH_STAGES
    batch_done: list[tuple[float, int]] = field(default_factory=list)  # (epoch seconds, images) per batch


@dataclass
class _End:
    state: _UnitState


@dataclass
class _Batch:
    state: _UnitState
    index: list[int]
    sources: list[str]
    items: list[Any]  # (3, H, W) uint8 tensor or the exception for that image
    # when every decoded image has the same size: one (B, 3, H, W) tensor of them, in item order
    # (items are views of it), so the pipeline packs the batch without another copy
    stack: Any = None
    ready: Any = None  # CUDA event recorded on the decode stream once the batch is decoded
    slot: bool = False  # holds one of the worker's device-memory slots (released by the device stage)
    host_ready: Any = None  # CUDA event: the pinned host copies of the images (overlays) are complete
    arena: int | None = None  # the shared slot (decoder process) holding the images, freed after the batch
    child_bytes: int = 0  # the decoder process's own peak device memory
    decode_s: float = 0.0  # seconds its decoding took (decoder process or batch decoder thread)
    slot_wait_s: float = 0.0  # seconds the decoder process waited for a free slot for it
    arena_need: int = 0  # bytes of the slot the batch would have needed (a smaller slot grows)
    ring: int | None = None  # the texture ring slot holding the batch's textures (freed once written)


_STOP = object()

# per batch, in a unit's stats ("batch_stages"): when it was done (epoch seconds), its decoding (decoder
# process or thread), the decoder process's wait for a free slot for it, the networks' thread's wait for
# it ("wait_input"), and the networks' time on it (seconds)
BATCH_STAGES = ("t", "decode", "slot_wait", "wait_input", "networks")


class _ProcBatch:
    """A batch in the decoder process: ``result()`` waits for it and views its images in the slot."""

    def __init__(self, worker: Worker, pending: list[Any], slot: int, fut: Future[Any]) -> None:
        self.worker, self.pending, self.slot, self.fut = worker, pending, slot, fut

    def result(self) -> _Batch:
        import math

        w = self.worker
        try:
            d = self.fut.result()
        except BaseException:
            w._arena_free.put(self.slot)
            raise
        state: _UnitState = self.pending[0][0]
        index = [p[1] for p in self.pending]
        sources = [p[2] for p in self.pending]
        arena = w._arenas[self.slot]
        _add(state.stages, "read", d.read_seconds)
        _add(state.stages, "decode", d.decode_seconds)
        _add(state.stages, "slot_copy", d.copy_seconds)
        _add(state.stages, "slot_wait", d.slot_wait_seconds)
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
        return _Batch(
            state, index, sources, items, stack,
            arena=self.slot, child_bytes=d.device_bytes, arena_need=d.needed,
            decode_s=d.decode_seconds, slot_wait_s=d.slot_wait_seconds,
        )  # fmt: skip


class _InOrder:
    """The device stage's queue handed out to its threads in order, with a ticket each, and what they
    make of each item passed on downstream in ticket order: the writer sees a unit's batches, and its
    end, as one thread would have passed them. A thread done ahead of an earlier ticket leaves its item
    here and goes on to the next batch; whichever thread completes the earliest missing ticket passes
    on everything that is then in order."""

    def __init__(self, worker: Worker, source: queue_mod.Queue[Any], sink: queue_mod.Queue[Any]) -> None:
        self._w, self._source, self._sink = worker, source, sink
        self._take = threading.Lock()
        self._lock = threading.Lock()
        self._taken = self._passed = 0
        self._closed = False
        self._done: dict[int, Any] = {}  # finished items waiting for an earlier ticket
        self._passing = False  # a thread is putting items downstream (one at a time keeps the order)

    def take(self) -> tuple[int, Any]:
        """(ticket, next item); once one thread took the end of the stream, (-1, _STOP) for the others."""
        with self._take:
            if self._closed:
                return -1, _STOP
            item = self._w._get(self._source)
            self._closed = item is _STOP
            self._taken += 1
            return self._taken - 1, item

    def pass_on(self, ticket: int, item: Any) -> None:
        """Hand over ``item`` of ``ticket`` (-1: nothing); it goes downstream after every earlier one."""
        if ticket < 0:
            return
        with self._lock:
            self._done[ticket] = item
            if self._passing:  # the thread passing items on takes this one too, in its turn
                return
            self._passing = True
        try:
            while True:
                with self._lock:
                    if self._passed not in self._done:
                        self._passing = False
                        return
                    nxt = self._done.pop(self._passed)
                self._w._put(self._sink, nxt)  # waits for room downstream
                with self._lock:
                    self._passed += 1
        except BaseException:
            with self._lock:
                self._passing = False
            raise


class _BusyShares:
    """Wall time the networks' threads are busy, shared out among the batches in progress (dt / k each
    while k run at once): the shares add up to the time any of them was busy, so a worker's busy
    fraction and rate mean the same with one networks' thread as with several."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shares: dict[int, float] = {}
        self._last = 0.0

    def _advance(self) -> None:
        now = time.perf_counter()
        if self._shares:
            d = (now - self._last) / len(self._shares)
            for k in self._shares:
                self._shares[k] += d
        self._last = now

    def start(self, key: int) -> None:
        with self._lock:
            self._advance()
            self._shares[key] = 0.0

    def stop(self, key: int) -> float:
        """The busy time of batch ``key``, started with :meth:`start`."""
        with self._lock:
            self._advance()
            return self._shares.pop(key)


class Worker:
    def __init__(
        self, spec: WorkerSpec, *, reconstructor: Any = None, local_device: str | None = None
    ) -> None:
        self.spec = spec
        self.local_device = local_device or spec.profile.device
        self.pid = os.getpid()
        self.owner = owner_id(spec.name, self.pid)
        self.batch_size = max(1, spec.profile.batch_size)
        self.formats = frozenset(spec.formats)
        self.texture = bool(self.formats & TEXTURE_FORMATS)
        self.keep_images = "overlay" in self.formats
        self._rec = reconstructor
        self._batcher_thread: threading.Thread | None = None  # started once the networks are ready
        self._decoder_setup: threading.Thread | None = None
        self._sampler: Any = None  # StackSampler (FACEFLEET_STACK_SAMPLES)
        self._window: Any = None  # BatchWindowProfiler (FACEFLEET_TORCH_PROFILE)
        self._local = threading.local()  # per decoder thread: its CUDA stream
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._fatal: BaseException | None = None
        self._stop = threading.Event()
        self._progress: list[float] = [0, 0, 0, 0.0]  # images, faces, failed, busy seconds (unflushed)
        self._progress_lock = threading.Lock()
        self._busy = _BusyShares()
        depth = 2 * self.batch_size
        self._read_q: queue_mod.Queue[Any] = queue_mod.Queue(maxsize=depth)
        # decoded batches waiting for the device (each holds its images in device memory)
        self._gpu_q: queue_mod.Queue[Any] = queue_mod.Queue(maxsize=max(1, spec.decoders))
        # on CUDA a batch takes a slot before its images are decoded into device memory and gives it
        # back once the networks are done with it: at batch 128 a 1080p batch is 0.8 GB
        self._slots = threading.Semaphore(max(1, spec.profile.batches_in_flight))
        self._write_q: queue_mod.Queue[Any] = queue_mod.Queue(maxsize=4)
        self._order = _InOrder(self, self._gpu_q, self._write_q)  # the networks' threads' turns
        # decoder process (CUDA): its slots of shared device memory and the free ones
        self._proc: Any = None
        self._arenas: list[Any] = []
        self._arena_free: queue_mod.Queue[int] = queue_mod.Queue()
        self._grow_warned = False
        self._ring: Any = None  # TextureRing: textures to the writer processes through shared memory
        self._batch_no = 0

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> int:
        import torch

        spec = self.spec
        torch.set_num_threads(max(1, spec.profile.threads))
        local = self.local_device
        self.device = torch.device(local)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # the GPU JPEG decoder's set-up (~1-2 s for nvImageCodec) overlaps loading the networks
            from facefleet.io.gpu_decode import configure_nvimgcodec, jpeg_decoder

            configure_nvimgcodec(spec.profile.decode_backends, spec.profile.decode_cpu_threads)
            self._decoder_setup = threading.Thread(
                target=jpeg_decoder,
                args=(self.device, spec.profile.decoder),
                name="decoder-setup",
                daemon=True,
            )
            self._decoder_setup.start()
        if spec.profile.decode_process:
            self._start_decoder_process()
        if self._rec is None:
            self._rec = _make_reconstructor(spec, local)
        self._ring = self._texture_ring()
        db = open_queue(spec.queue_path)
        db.register_worker(self.owner, spec.name, spec.profile.device, self.pid)
        threads = [
            threading.Thread(target=self._guard(self._heartbeat), name="heartbeat", daemon=True),
            threading.Thread(target=self._guard(self._claimer), name="claimer", daemon=True),
            threading.Thread(target=self._guard(self._batcher), name="batcher", daemon=True),
            threading.Thread(target=self._guard(self._writer), name="writer", daemon=True),
        ]
        from facefleet.engine.stacks import BatchWindowProfiler, StackSampler

        # profilers of the steady state: they start once the networks are ready (_device_stage)
        sampler = self._sampler = StackSampler.from_env(spec.name.replace(":", "_"))
        if self.device.type == "cuda":
            self._window = BatchWindowProfiler.from_env(spec.name.replace(":", "_"))
        self._batcher_thread = threads[2]  # the device stage starts it
        for t in threads:
            if t is not self._batcher_thread:
                t.start()
        try:
            self._guard(self._device_stage)()
        finally:
            self._stop.set()
            if sampler is not None:
                sampler.stop()
            for t in threads[1:]:
                if t.ident is not None:  # the batcher does not start when the warm-up failed
                    t.join(timeout=60)
            if self._proc is not None:
                self._proc.close()
            if self._ring is not None:
                self._ring.close()
            self._flush_progress(db)
            if self._fatal is not None:
                with self._held_lock:
                    held = list(self._held)
                for uid in held:
                    db.release(uid, self.owner, f"worker {spec.name} failed: {self._fatal!r}")
            db.close()
        if self._fatal is not None:
            raise self._fatal
        return EXIT_OK

    def _start_decoder_process(self) -> None:
        """Slots of device memory (one per batch in flight, sized for ``batch_size`` 1080p frames) and
        the child that reads and decodes into them; it starts now and finishes setting up while the
        networks warm up (:meth:`_device_stage` waits for it). Failing that: threads, with a warning."""
        from facefleet.engine.decode_proc import DecoderProcess

        p = self.spec.profile
        cap = self.batch_size * 3 * 1088 * 1920  # larger images than that go back encoded, decoded here
        try:
            slots = max(1, p.batches_in_flight)
            if self.device.type == "cpu":
                _check_shared_memory(slots * cap, "the decoder process's slots")
            self._arenas = [self._new_arena(cap) for _ in range(slots)]
            self._proc = DecoderProcess(
                self._arenas,
                decoder=p.decoder,
                chunk=p.decode_chunk,
                readers=self.spec.readers,
                threads=p.decode_threads,
                backends=p.decode_backends,
                cpu_threads=p.decode_cpu_threads,
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

    def _texture_ring(self) -> Any:
        """Shared-memory slots for the textures of batches on their way to the writer processes
        (:mod:`facefleet.engine.texture_ring`): when textures are written by processes and the
        reconstructor can copy them into a given buffer; failing that, pickled as before (warning)."""
        import inspect

        fn = getattr(self._rec, "reconstruct_tensors", None)
        if not self.texture or not self._file_processes() or fn is None:
            return None
        if "texture_out" not in inspect.signature(fn).parameters:
            return None
        from facefleet.engine.texture_ring import TextureRing

        slots, size = 3, int(self.spec.texture_size)
        cap = self.batch_size * size * size * 4  # one RGBA texture per image; more faces go pickled
        try:
            _check_shared_memory(slots * cap, "the texture slots")
            return TextureRing(slots, cap)
        except Exception as e:
            print(
                f"facefleet worker {self.spec.name}: textures go to the writer processes pickled "
                f"({type(e).__name__}: {e})",
                file=sys.stderr,
            )
            return None

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def wrapped() -> None:
            try:
                fn()
            except BaseException as e:
                if self._fatal is None:
                    self._fatal = e
                self._stop.set()

        return wrapped

    def _put(self, q: queue_mod.Queue[Any], item: Any) -> None:
        while True:
            if self._fatal is not None:
                raise _Abort()
            try:
                q.put(item, timeout=0.2)
                return
            except queue_mod.Full:
                continue

    def _get(self, q: queue_mod.Queue[Any]) -> Any:
        while True:
            if self._fatal is not None:
                raise _Abort()
            try:
                return q.get(timeout=0.2)
            except queue_mod.Empty:
                continue

    # -- threads ---------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        db = open_queue(self.spec.queue_path)
        every = max(0.1, self.spec.lease_seconds / 3)
        last_beat = 0.0
        try:
            while not self._stop.wait(0.5):
                now = time.monotonic()
                try:
                    self._flush_progress(db)
                    if now - last_beat >= every:
                        with self._held_lock:
                            held = list(self._held)
                        db.heartbeat(self.owner, held, self.spec.lease_seconds)
                        last_beat = now
                except Exception as e:  # a busy database must not kill the worker; the lease is long
                    print(f"facefleet worker {self.spec.name}: heartbeat failed: {e}", file=sys.stderr)
        finally:
            db.close()

    def _flush_progress(self, db: WorkQueue) -> None:
        with self._progress_lock:
            images, faces, failed, busy = self._progress
            self._progress = [0, 0, 0, 0.0]
        if images or busy:
            db.add_progress(self.owner, int(images), int(faces), int(failed), float(busy))

    def _draining(self, db: WorkQueue) -> bool:
        if db.get_meta("drain") == "1":
            return True
        cp = self.spec.coordinator_pid
        return cp is not None and os.getppid() != cp  # coordinator gone: finish up and leave

    def _claimer(self) -> None:
        spec = self.spec
        db = open_queue(spec.queue_path)
        pool = ThreadPoolExecutor(max(1, spec.readers), thread_name_prefix="reader")
        try:
            while not self._stop.is_set():
                if self._draining(db):
                    break
                unit = db.claim(self.owner, spec.lease_seconds, spec.max_attempts)
                if unit is None:
                    if db.get_meta("listing_done") == "1" and db.remaining() == 0:
                        break
                    self._stop.wait(spec.poll_seconds)
                    continue
                with self._held_lock:
                    self._held.add(unit.id)
                n = len(unit.paths)
                state = _UnitState(unit, time.time(), [None] * n, [None] * n if self.keep_images else [])
                for i, p in enumerate(unit.paths):  # the decoder process reads for itself
                    self._put(self._read_q, (state, i, p, None if self._proc else pool.submit(read_file, p)))
                self._put(self._read_q, _End(state))
                if unit.retried:  # run a suspect unit alone, so that a crash blames only it
                    while not self._stop.is_set() and unit.id in self._held:
                        self._stop.wait(0.05)
        except _Abort:
            pass
        finally:
            with contextlib.suppress(_Abort):
                self._put(self._read_q, _STOP)
            pool.shutdown(wait=False, cancel_futures=True)
            db.close()

    def _batcher(self) -> None:
        """Cuts the read stream into batches and decodes up to ``spec.decoders`` batches at once;
        the device stage receives them in order (futures), so unit boundaries stay in place."""
        pending: list[tuple[_UnitState, int, str, Future[Any]]] = []
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
                self._put(self._gpu_q, _ProcBatch(self, batch, slot, fut))
                return
            if gpu:  # device memory for it, taken in batch order (so no later batch can starve it)
                while not self._slots.acquire(timeout=0.2):
                    if self._fatal is not None:
                        raise _Abort()
            self._put(self._gpu_q, batches.submit(self._decode, batch, per_image, gpu))

        try:
            while True:
                item = self._get(self._read_q)
                if item is _STOP or isinstance(item, _End):
                    if pending:
                        submit(pending)
                        pending = []
                    self._put(self._gpu_q, item)
                    if item is _STOP:
                        return
                    continue
                pending.append(item)
                if len(pending) >= self.batch_size:
                    submit(pending)
                    pending = []
        except _Abort:
            pass
        finally:
            batches.shutdown(wait=True)
            per_image.shutdown(wait=False, cancel_futures=True)

    def _decode(self, pending: list[Any], pool: ThreadPoolExecutor, slot: bool = False) -> _Batch:
        """Wait for the reads of a batch and decode it: (3, H, W) uint8 tensors on the device.
        ``slot``: the batcher took a device-memory slot for it (passed on to the batch)."""
        import torch

        from facefleet.io.decode import decode_image

        state: _UnitState = pending[0][0]
        index = [p[1] for p in pending]
        sources = [p[2] for p in pending]
        items: list[Any] = [None] * len(pending)
        blobs: list[bytes] = []
        blob_at: list[int] = []
        read_s = 0.0
        for k, (_, _, path, fut) in enumerate(pending):
            # no read future: queued for a decoder process that then failed to start
            data, secs = fut.result() if fut is not None else read_file(path)
            read_s += secs
            if isinstance(data, BaseException):
                items[k] = data
            else:
                blobs.append(data)
                blob_at.append(k)
        _add(state.stages, "read", read_s)
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
            _add(state.stages, "decode", secs)
            return _Batch(state, index, sources, items, stack, ready, slot=slot, decode_s=secs)
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
        _add(state.stages, "decode", secs)
        return _Batch(state, index, sources, items, stack, decode_s=secs)

    def _device_stage(self) -> None:
        if self._decoder_setup is not None:
            self._decoder_setup.join()
        warm = getattr(self._rec, "warmup", None)
        where = None
        if self.device.type == "cuda" and callable(warm):
            # cuDNN plans and CUDA-graph captures, while the claimer reads the first files; the
            # decoders start after it, so no other thread uses the device during the captures
            from facefleet.io.gpu_decode import jpeg_decoder

            t0 = time.perf_counter()
            warm()
            dec = jpeg_decoder(self.device, self.spec.profile.decoder)  # set up already: cached
            where = f"networks ready in {time.perf_counter() - t0:.1f} s, JPEG decoder "
            where += dec.name if dec is not None else "Pillow (CPU)"
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
        except _Abort:
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
        except _Abort:
            pass

    def _device_loop(self, profile: bool = True) -> None:
        """Batches from the decoders through the networks to the writer, until the end of the input.
        ``profile``: this thread's batches drive the window profiler (one thread of several)."""
        import torch

        from facefleet.io.gpu_decode import decoder_memory_bytes

        while True:
            # what this thread waits for, per unit: the next decoded batch ("wait_input": reading and
            # decoding are the bound) and room downstream ("wait_writers": the file writers are)
            t_wait = time.perf_counter()
            ticket, item = self._order.take()
            if item is _STOP or isinstance(item, _End):
                self._order.pass_on(ticket, item)
                if item is _STOP:
                    return
                continue
            if profile and self._window is not None:
                self._window.batch_starts()
            batch: _Batch = item.result()  # a decode future (decoding failures are per image)
            t_got = time.perf_counter()
            waited = t_got - t_wait
            _add(batch.state.stages, "wait_input", waited)
            if batch.ready is not None:  # decoded on another stream: order, and keep memory alive
                current = torch.cuda.current_stream(self.device)
                current.wait_event(batch.ready)
                for t in [batch.stack] if batch.stack is not None else batch.items:
                    if isinstance(t, torch.Tensor):
                        t.record_stream(current)
            ring = None if self._ring is None else self._take_ring_slot()
            t0 = time.perf_counter()
            _add(batch.state.stages, "wait_writers", t0 - t_got)
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
            t_put = time.perf_counter()
            self._order.pass_on(ticket, (batch, results))  # after the batches taken before it
            _add(batch.state.stages, "wait_writers", time.perf_counter() - t_put)

    def _take_ring_slot(self) -> int:
        """A free texture slot (waits for the writer processes to be done with one)."""
        while True:
            if self._fatal is not None:
                raise _Abort()
            slot = self._ring.take(0.2)
            if slot is not None:
                return int(slot)

    def _drop_device_images(self, batch: _Batch) -> None:
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
                    _check_shared_memory(size, "a larger decode slot")
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

    def _file_processes(self) -> bool:
        procs = self.spec.file_processes
        if procs is None:
            procs = self.device.type == "cuda" and bool(self.formats & PROCESS_FORMATS)
        return bool(procs)

    def _file_pool(self) -> Any:
        """Executor for per-image files. Meshes and textures (PNG encoding, OBJ text) are CPU work
        that holds the GIL, so a GPU worker writes them in spawned processes (as many as ``writers``);
        JSON-only output and CPU workers (whose cores are taken by the networks) use threads."""
        if self._file_processes():
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            return ProcessPoolExecutor(max(1, self.spec.writers), mp_context=mp.get_context("spawn"))
        return ThreadPoolExecutor(max(1, self.spec.writers), thread_name_prefix="writer")

    def _writer(self) -> None:
        """Hands each image's files to the pool as results arrive; finished units go to a finisher
        thread, which waits for their files, flushes them and writes the unit's Parquet, so that
        dispatching the next batches' files never waits for a unit's flush."""
        from concurrent.futures.process import BrokenProcessPool

        pool = self._file_pool()
        done_q: queue_mod.Queue[Any] = queue_mod.Queue(maxsize=4)
        finisher = threading.Thread(
            target=self._guard(lambda: self._finisher(done_q)), name="finisher", daemon=True
        )
        finisher.start()
        try:
            while True:
                item = self._get(self._write_q)
                if item is _STOP:
                    self._put(done_q, _STOP)
                    finisher.join()
                    return
                if isinstance(item, _End):
                    self._put(done_q, item.state)
                    continue
                batch, results = item
                st = batch.state
                in_ring: list[Future[Any]] = []  # the files that read the batch's texture slot
                for k, (i, r) in enumerate(zip(batch.index, results, strict=False)):
                    st.results[i] = r
                    sent = r if batch.ring is None else _with_texture_refs(r, self._ring)
                    if self.formats:  # failed images get their JSON (with the error) too
                        image = None
                        if self.keep_images and r.error is None:
                            if batch.host_ready is not None:  # the copies from the device are done
                                batch.host_ready.synchronize()
                                batch.host_ready = None
                            image = batch.items[k].permute(1, 2, 0).numpy()  # (H, W, 3) uint8
                        args = (sent, image, self.spec.out_dir, self.spec.input_root, tuple(self.formats))
                        try:
                            fut = pool.submit(write_files, *args)
                        except BrokenProcessPool:  # a writer process died (OOM killer...): new pool
                            pool.shutdown(wait=False)
                            pool = self._file_pool()
                            fut = pool.submit(write_files, *args)
                        st.files.append((i, fut))
                        if sent is not r:
                            in_ring.append(fut)
                    if sent is not r:  # the slot is the writers' now; the results keep no view of it
                        for face, moved in zip(r.faces, sent.faces, strict=True):
                            if moved is not face:  # (the others go pickled, with their own arrays)
                                face.texture = None
                if batch.ring is not None:
                    self._release_ring_after(batch.ring, in_ring)
        except _Abort:
            pass
        finally:
            if finisher.is_alive():
                finisher.join(timeout=60)
            pool.shutdown(wait=True)

    def _release_ring_after(self, slot: int, futures: list[Future[Any]]) -> None:
        """Texture slot ``slot`` is free once all ``futures`` (the files reading it) are done."""
        if not futures:
            self._ring.release(slot)
            return
        left = [len(futures)]
        lock = threading.Lock()

        def done(_: Future[Any]) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._ring.release(slot)

        for fut in futures:
            fut.add_done_callback(done)

    def _finisher(self, done_q: queue_mod.Queue[Any]) -> None:
        db = open_queue(self.spec.queue_path)
        try:
            while True:
                st = self._get(done_q)
                if st is _STOP:
                    return
                self._finish_unit(st, db)
        except _Abort:
            pass
        finally:
            db.close()

    # -- steps -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _disk_errors(self) -> Any:
        """OUT that cannot take more (disk full, read-only, permission) becomes :class:`OutputError`."""
        try:
            yield
        except OSError as e:
            if e.errno in _DISK_ERRNOS:
                raise OutputError(e.errno, f"cannot write to {self.spec.out_dir}: {e.strerror}") from e
            raise

    def _finish_unit(self, st: _UnitState, db: WorkQueue) -> None:
        from facefleet.engine.manifest import write_unit

        for i, fut in st.files:
            try:
                with self._disk_errors():
                    _add(st.stages, "write", fut.result())
            except OutputError:
                raise
            except OSError as e:
                _fail(st, i, f"cannot write output files: {e}")
            except Exception as e:
                _fail(st, i, f"cannot write output files: {type(e).__name__}: {e}")
        if st.files:  # per-image files were written without fsyncs: flush them in one call
            from facefleet.io.atomic import sync_filesystem

            t0 = time.perf_counter()
            with self._disk_errors():
                sync_filesystem(Path(self.spec.out_dir))
            _add(st.stages, "write", time.perf_counter() - t0)
        results = [r for r in st.results if r is not None]
        if len(results) != len(st.unit.paths):  # cannot happen unless a stage lost items
            raise RuntimeError(f"unit {st.unit.id}: {len(results)} results for {len(st.unit.paths)} inputs")
        t0 = time.perf_counter()
        with self._disk_errors():
            write_unit(self.spec.out_dir, st.unit.id, results)
        _add(st.stages, "write", time.perf_counter() - t0)
        db.complete(st.unit.id, self.owner, unit_stats(st, results, self.spec))
        with self._held_lock:
            self._held.discard(st.unit.id)

    def _reconstruct(self, batch: _Batch, texture_out: Any = None) -> list[ImageResult]:
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
            timings = batch.state.stages if self.spec.stage_timings else None
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
            if _device_broken(e) or isinstance(e, ImportError):  # the worker, not the image, is broken
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


class _Abort(Exception):
    """Another thread failed: leave quietly."""


_ADD_LOCK = threading.Lock()


def _add(d: dict[str, float], key: str, v: float) -> None:
    with _ADD_LOCK:  # several reader/writer threads add to the same unit's timings
        d[key] = d.get(key, 0.0) + v


def _check_shared_memory(need: int, what: str) -> None:
    """Shared memory lives in /dev/shm, which containers often keep small (64 MB): a process writing
    past what is there dies of SIGBUS, so ask first (``what`` names the user in the error)."""
    import shutil

    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return
    if free < need * 1.1:
        raise OSError(f"/dev/shm has {free >> 20} MiB free, {need >> 20} MiB needed for {what}")


def _with_texture_refs(result: ImageResult, ring: Any) -> ImageResult:
    """``result`` with each face texture that lies in a slot of ``ring`` replaced by its
    :class:`~facefleet.engine.texture_ring.TextureRef` (the writer process maps it), or ``result`` itself
    when none does."""
    import dataclasses

    refs = [None if f.texture is None else ring.ref(f.texture) for f in result.faces]
    if not any(refs):
        return result
    faces = [
        f if ref is None else dataclasses.replace(f, texture=ref)
        for f, ref in zip(result.faces, refs, strict=True)
    ]
    return dataclasses.replace(result, faces=faces)


def read_file(path: str) -> tuple[Any, float]:
    """A file's bytes (or the exception reading it raised) and the seconds it took."""
    from facefleet.io.discover import read_bytes

    t0 = time.perf_counter()
    try:
        data: Any = read_bytes(path)
    except Exception as e:
        data = e
    return data, time.perf_counter() - t0


def _fail(st: _UnitState, i: int, msg: str) -> None:
    r = st.results[i]
    if r is not None:
        st.results[i] = ImageResult(r.source, r.width, r.height, error=msg)


def _device_broken(e: BaseException) -> bool:
    """CUDA errors that poison the context (illegal address, launch failure, ECC...)."""
    name = type(e).__name__
    msg = str(e)
    return name == "AcceleratorError" or "CUDA error" in msg or "CUBLAS_STATUS" in msg or "cuDNN error" in msg


def write_files(
    result: ImageResult, image: Any, out_dir: str, input_root: str | None, formats: tuple[str, ...]
) -> float:
    """Write one image's per-image files under ``OUT/files`` (mirroring the input tree); return the
    seconds it took. Module level, so that a process pool can run it."""
    from facefleet.engine.manifest import output_location
    from facefleet.engine.texture_ring import TextureRef, resolve
    from facefleet.io.atomic import deferred_fsync
    from facefleet.outputs import write_outputs

    t0 = time.perf_counter()
    for face in result.faces:  # in a slot of the worker's texture ring: mapped here
        if isinstance(face.texture, TextureRef):
            face.texture = resolve(face.texture)
    rel, stem = output_location(result.source, input_root)
    with deferred_fsync():  # made durable all at once before the unit is recorded (_finish_unit)
        write_outputs(result, image, Path(out_dir) / "files" / rel, stem, set(formats))
    return time.perf_counter() - t0


def error_text(e: BaseException) -> str:
    """The manifest's error text: the reason without the source (which has its own column)."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, str):
        return reason
    if isinstance(e, OSError) and e.strerror:
        return f"cannot read file ({e.strerror})"
    return f"{type(e).__name__}: {e}"


def error_kind(text: str) -> str:
    """A short category of an error text for the failed-by-reason table."""
    t = text.lower()
    for key, kind in (
        ("empty file", "empty"),
        ("truncated", "truncated"),
        ("too large", "too_large"),
        ("decompression bomb", "too_large"),
        ("megapixel", "too_large"),
        ("not an image", "not_an_image"),
        ("unknown format", "not_an_image"),
        ("file not found", "missing"),
        ("permission denied", "permission"),
        ("cannot read", "read_error"),
        ("out of device memory", "out_of_memory"),
        ("reconstruction failed", "pipeline_error"),
        ("cannot write", "write_error"),
        ("unit failed", "worker_crash"),
        ("corrupt", "corrupt"),
    ):
        if key in t:
            return kind
    return "decode_error"


def unit_stats(st: _UnitState, results: list[ImageResult], spec: WorkerSpec) -> dict[str, Any]:
    """Counts and timings of a finished unit (stored with the unit, sent as the unit_done event)."""
    by_reason: dict[str, int] = {}
    failures: list[dict[str, str]] = []
    for r in results:
        if r.error is not None:
            kind = error_kind(r.error)
            by_reason[kind] = by_reason.get(kind, 0) + 1
            if sum(f["reason"] == kind for f in failures) < 3:
                failures.append({"source": r.source, "reason": kind, "error": r.error})
    stages = {k: round(v, 6) for k, v in st.stages.items() if not k.startswith("_")}
    out: dict[str, Any] = {
        "worker": spec.name,
        "device": spec.profile.device,
        "images": len(results),
        "faces": sum(len(r.faces) for r in results),
        "no_face": sum(1 for r in results if r.error is None and not r.faces),
        "failed": sum(1 for r in results if r.error is not None),
        "failed_by_reason": by_reason,
        "failures": failures,
        "stages": stages,
        "seconds": round(time.time() - st.t0, 6),
        "busy_seconds": round(st.busy, 6),
        "batch_seconds": [round(b, 6) for b in st.batch_seconds],
        "batch_done": [[round(t, 4), n] for t, n in st.batch_done],
        "batch_stages": [[round(row[0], 4), *(round(v, 5) for v in row[1:])] for row in st.batch_stages],
        "batch_size": spec.profile.batch_size,
    }
    if "_peak_mib" in st.stages:
        out["gpu_memory_peak_mib"] = round(st.stages["_peak_mib"], 1)
    return out


def _make_reconstructor(spec: WorkerSpec, device: str) -> Any:
    kwargs = dict(spec.reconstructor_kwargs)
    if spec.model_dir is not None:
        kwargs.setdefault("model_dir", spec.model_dir)
    kwargs.setdefault("texture_size", spec.texture_size)
    if spec.reconstructor:
        mod, _, attr = spec.reconstructor.partition(":")
        factory = getattr(importlib.import_module(mod), attr)
    else:
        from facefleet.pipeline import Reconstructor as factory

        if device == "cpu":  # the worker's share of the cores, for either CPU runtime
            kwargs.setdefault("threads", max(1, spec.profile.threads))
        elif not spec.profile.compile:  # [gpu] compile = false (default: where Triton is installed)
            kwargs.setdefault("compiled", False)
    return factory(device=device, precision=spec.profile.precision, **kwargs)
