"""The engine's typed event stream: what a job tells its subscribers (the CLI's progress line, a
log file, the later REST service) while it runs.

Every event is a frozen dataclass with the ``job_id`` it belongs to and the wall-clock time ``t``
(seconds since the epoch). :class:`EventBus` delivers them to callbacks (called on the job's
thread, in order; a callback that raises is dropped with a warning rather than failing the job)
and to iterators (:meth:`EventBus.stream`), which end after the job's :class:`JobDone`.
"""

from __future__ import annotations

import queue as queue_mod
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias


@dataclass(frozen=True)
class Progress:
    """The job's running totals (emitted about twice a second).

    ``done`` counts images finished over the whole run (earlier sessions included), ``listed`` the
    images listed so far (None before the first unit is queued), ``listing_done`` whether the
    listing is complete; ``images``/``faces``/``failed`` and the rates are this session's;
    ``per_device`` is images per second per device (gpu0, cpu1, ...) over the last seconds.
    """

    job_id: str
    t: float
    done: int
    listed: int | None
    listing_done: bool
    images: int
    faces: int
    failed: int
    seconds: float
    images_per_s: float
    faces_per_s: float
    per_device: tuple[tuple[str, float], ...] = ()

    @property
    def eta_seconds(self) -> float | None:
        if not self.listing_done or not self.listed or self.images_per_s <= 0:
            return None
        return max(0, self.listed - self.done) / self.images_per_s


@dataclass(frozen=True)
class UnitDone:
    """A unit of work finished (``state`` "done"), failed as poison (``"failed"``) or was split in
    two halves to isolate a crashing file (``"split"``)."""

    job_id: str
    t: float
    unit: str
    state: str
    images: int = 0
    faces: int = 0
    failed: int = 0
    worker: str | None = None
    stats: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class WorkerUp:
    """A worker process registered with the queue (its pipeline is built)."""

    job_id: str
    t: float
    worker: str
    device: str
    pid: int


@dataclass(frozen=True)
class WorkerDown:
    """A worker process ended: ``exit_code`` 0 when it finished, negative when killed by a signal;
    ``restarting`` when the coordinator starts it again."""

    job_id: str
    t: float
    worker: str
    pid: int | None
    exit_code: int | None
    units_released: int = 0
    restarting: bool = False


@dataclass(frozen=True)
class Error:
    """Something the user should read: ``fatal`` ends the job, others are notes (a worker died, an
    input was skipped, the manifest was repaired)."""

    job_id: str
    t: float
    message: str
    fatal: bool = False


@dataclass(frozen=True)
class JobDone:
    """The job ended; ``summary`` is its :class:`~facefleet.engine.totals.RunSummary` (None when it
    could not start), ``error`` the one-line reason when it failed."""

    job_id: str
    t: float
    status: str  # "completed" | "interrupted" | "failed"
    summary: Any = None
    error: str | None = None


Event: TypeAlias = Progress | UnitDone | WorkerUp | WorkerDown | Error | JobDone
Callback: TypeAlias = Callable[[Event], None]


def event_record(ev: Event) -> dict[str, Any]:
    """A JSON-able record of an event (``--log-json``): its fields and ``event`` = the class name."""
    if isinstance(ev, JobDone):
        data: dict[str, Any] = {"job_id": ev.job_id, "t": ev.t, "status": ev.status, "error": ev.error}
        s = ev.summary
        if s is not None:
            data.update(images=s.images, faces=s.faces, failed=s.failed, seconds=round(s.seconds, 3))
    else:
        data = asdict(ev)
    return {"event": type(ev).__name__, **data}


class EventBus:
    """Delivers events to subscribers. Thread-safe; one bus serves every job of an engine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[tuple[str | None, Callback]] = []

    def subscribe(self, callback: Callback, job_id: str | None = None) -> Callable[[], None]:
        """Call ``callback(event)`` for every event (of ``job_id`` only, if given). Returns a
        function that unsubscribes."""
        entry = (job_id, callback)
        with self._lock:
            self._subs.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subs:
                    self._subs.remove(entry)

        return unsubscribe

    def stream(self, job_id: str | None = None, timeout: float | None = None) -> Generator[Event, None, None]:
        """Iterate over the events from now on (of ``job_id`` only, if given); ends after the
        :class:`JobDone` of ``job_id`` (never, without a job id, unless ``timeout`` seconds pass
        with no event)."""
        q: queue_mod.Queue[Event] = queue_mod.Queue()
        stop = self.subscribe(q.put, job_id)
        try:
            while True:
                try:
                    ev = q.get(timeout=timeout)
                except queue_mod.Empty:
                    return
                yield ev
                if job_id is not None and isinstance(ev, JobDone):
                    return
        finally:
            stop()

    def publish(self, ev: Event) -> None:
        with self._lock:
            subs = list(self._subs)
        for job, cb in subs:
            if job is not None and job != ev.job_id:
                continue
            try:
                cb(ev)
            except Exception as e:  # a broken subscriber must not stop the job
                with self._lock:
                    if (job, cb) in self._subs:
                        self._subs.remove((job, cb))
                print(f"facefleet: an event subscriber failed and was removed: {e!r}", file=sys.stderr)
