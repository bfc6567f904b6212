"""The state every stage of a worker shares, and how its threads hand work on.

:class:`WorkerBase` holds the queues between the stages, the device-memory slots, the units held
and the first failure of any thread (``_fatal``: every blocking ``_put``/``_get`` then raises
:class:`Abort`, so each thread leaves quietly and the process ends with that failure). The stages
(:mod:`.claim`, :mod:`.read`, :mod:`.networks`, :mod:`.sink`) are mixins of it that
:class:`~facefleet.engine.worker.main.Worker` puts together.
"""

from __future__ import annotations

import os
import queue as queue_mod
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from facefleet.engine.queue import Unit
from facefleet.engine.worker.spec import TEXTURE_FORMATS, WorkerSpec, owner_id
from facefleet.types import ImageResult


@dataclass
class UnitState:
    """A claimed unit on its way through the stages: its results by item, timings and files."""

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
class End:
    """Follows the last item of a unit down the stages."""

    state: UnitState


@dataclass
class Batch:
    """Up to ``batch_size`` items of one unit, decoded (per item a (3, H, W) uint8 tensor or the
    exception reading or decoding it raised)."""

    state: UnitState
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


STOP = object()

# per batch, in a unit's stats ("batch_stages"): when it was done (epoch seconds), its decoding (decoder
# process or thread), the decoder process's wait for a free slot for it, the networks' thread's wait for
# it ("wait_input"), and the networks' time on it (seconds)
BATCH_STAGES = ("t", "decode", "slot_wait", "wait_input", "networks")


class Abort(Exception):
    """Another thread failed: leave quietly."""


ADD_LOCK = threading.Lock()


def add_time(d: dict[str, float], key: str, v: float) -> None:
    with ADD_LOCK:  # several reader/writer threads add to the same unit's timings
        d[key] = d.get(key, 0.0) + v


def fail_image(st: UnitState, i: int, msg: str) -> None:
    """Item ``i`` of a unit becomes an error row with ``msg`` (a failure after its networks)."""
    r = st.results[i]
    if r is not None:
        st.results[i] = ImageResult(r.source, r.width, r.height, error=msg)


def check_shared_memory(need: int, what: str) -> None:
    """Shared memory lives in /dev/shm, which containers often keep small (64 MB): a process writing
    past what is there dies of SIGBUS, so ask first (``what`` names the user in the error)."""
    import shutil

    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return
    if free < need * 1.1:
        raise OSError(f"/dev/shm has {free >> 20} MiB free, {need >> 20} MiB needed for {what}")


class InOrder:
    """The device stage's queue handed out to its threads in order, with a ticket each, and what they
    make of each item passed on downstream in ticket order: the writer sees a unit's batches, and its
    end, as one thread would have passed them. A thread done ahead of an earlier ticket leaves its item
    here and goes on to the next batch; whichever thread completes the earliest missing ticket passes
    on everything that is then in order."""

    def __init__(self, worker: WorkerBase, source: queue_mod.Queue[Any], sink: queue_mod.Queue[Any]) -> None:
        self._w, self._source, self._sink = worker, source, sink
        self._take = threading.Lock()
        self._lock = threading.Lock()
        self._taken = self._passed = 0
        self._closed = False
        self._done: dict[int, Any] = {}  # finished items waiting for an earlier ticket
        self._passing = False  # a thread is putting items downstream (one at a time keeps the order)

    def take(self) -> tuple[int, Any]:
        """(ticket, next item); once one thread took the end of the stream, (-1, STOP) for the others."""
        with self._take:
            if self._closed:
                return -1, STOP
            item = self._w._get(self._source)
            self._closed = item is STOP
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


class BusyShares:
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


class WorkerBase:
    """The worker's shared state (see the module docstring); ``device`` is set when it runs."""

    device: Any  # torch.device of the networks (set by Worker.run, or by tests)

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        reconstructor: Any = None,
        local_device: str | None = None,
        started: float | None = None,
    ) -> None:
        self.spec = spec
        # time.perf_counter() at the process's launch (start-up lines say how long after it)
        self.started = time.perf_counter() if started is None else started
        # eager start: the compiled networks being built (startup.BackgroundCompile), until they take over
        self._compiling: Any = None
        self._eager_batches = 0  # batches run on eager networks before the compiled ones took over
        self._batch_count = 0  # batches through the networks (the first one's time is reported)
        self._first_batch_s: float | None = None  # seconds from launch to the first batch's results
        self._queue: Any = None  # the worker's queue (WorkQueue), for its start-up event
        self.local_device = local_device or spec.profile.device
        self.pid = os.getpid()
        self.owner = owner_id(spec.name, self.pid)
        self.batch_size = max(1, spec.profile.batch_size)
        self.formats = frozenset(spec.run.formats)
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
        self._drain = threading.Event()  # this worker alone drains (an external worker's signal)
        self._progress: list[float] = [0, 0, 0, 0.0]  # images, faces, failed, busy seconds (unflushed)
        self._progress_lock = threading.Lock()
        self._busy = BusyShares()
        depth = 2 * self.batch_size
        self._read_q: queue_mod.Queue[Any] = queue_mod.Queue(maxsize=depth)
        # decoded batches waiting for the device (each holds its images in device memory)
        self._gpu_q: queue_mod.Queue[Any] = queue_mod.Queue(maxsize=max(1, spec.decoders))
        # on CUDA a batch takes a slot before its images are decoded into device memory and gives it
        # back once the networks are done with it: at batch 128 a 1080p batch is 0.8 GB
        self._slots = threading.Semaphore(max(1, spec.profile.batches_in_flight))
        self._write_q: queue_mod.Queue[Any] = queue_mod.Queue(maxsize=4)
        self._order = InOrder(self, self._gpu_q, self._write_q)  # the networks' threads' turns
        # decoder process (CUDA): its slots of shared device memory and the free ones
        self._proc: Any = None
        self._arenas: list[Any] = []
        self._arena_free: queue_mod.Queue[int] = queue_mod.Queue()
        self._grow_warned = False
        self._ring: Any = None  # TextureRing: textures to the writer processes through shared memory
        self._batch_no = 0

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
                raise Abort()
            try:
                q.put(item, timeout=0.2)
                return
            except queue_mod.Full:
                continue

    def _get(self, q: queue_mod.Queue[Any]) -> Any:
        while True:
            if self._fatal is not None:
                raise Abort()
            try:
                return q.get(timeout=0.2)
            except queue_mod.Empty:
                continue
