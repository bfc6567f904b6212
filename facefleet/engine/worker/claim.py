"""Claim stage: units from the queue, and the heartbeat that keeps their leases.

The claimer thread claims a unit, records it as held, and queues its items for the read stage (each
with its read already started on the reader pool; the decoder process reads for itself), then the
unit's :class:`~facefleet.engine.worker.base.End`. A unit that was retried (an earlier lease ended
in a crash) runs alone, so that a crash blames only it. The claimer stops when the run drains, when
a coordinator that started the worker is gone, or when the listing is done and no unit is left.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from facefleet.engine.queue import WorkQueue, open_queue
from facefleet.engine.worker.base import STOP, Abort, End, UnitState, WorkerBase
from facefleet.engine.worker.read import read_file
from facefleet.engine.worker.spec import WorkerSpec


def keep_leases(
    spec: WorkerSpec,
    owner: str,
    held: Callable[[], list[str]],
    stop: threading.Event,
    tick: Callable[[WorkQueue], None] | None = None,
) -> None:
    """A worker's heartbeat thread (photos and video alike): until ``stop``, extends the leases of the
    units ``held()`` names, a third of a lease apart, and calls ``tick(db)`` (progress counters) every
    0.5 s. A failing database is reported and tried again: a lease is long."""
    db = open_queue(spec.queue_path)
    every = max(0.1, spec.run.lease_seconds / 3)
    last_beat = 0.0
    try:
        while not stop.wait(0.5):
            now = time.monotonic()
            try:
                if tick is not None:
                    tick(db)
                if now - last_beat >= every:
                    db.heartbeat(owner, held(), spec.run.lease_seconds)
                    last_beat = now
            except Exception as e:  # a busy database must not kill the worker; the lease is long
                print(f"facefleet worker {spec.name}: heartbeat failed: {e}", file=sys.stderr)
    finally:
        db.close()


def draining(db: WorkQueue, drain: threading.Event, coordinator_pid: int | None) -> bool:
    """Whether a worker should claim no more units: asked to drain (this process, or the run through the
    queue), or started by a coordinator that is gone (its parent is another process now)."""
    if drain.is_set() or db.get_meta("drain") == "1":
        return True
    return coordinator_pid is not None and os.getppid() != coordinator_pid


class ClaimStage(WorkerBase):
    """The claimer and heartbeat threads of a worker."""

    def _heartbeat(self) -> None:
        """Extends the leases of the units held, a third of a lease apart, and flushes progress."""
        keep_leases(self.spec, self.owner, self._held_now, self._stop, tick=self._flush_progress)

    def _held_now(self) -> list[str]:
        with self._held_lock:
            return list(self._held)

    def _flush_progress(self, db: WorkQueue) -> None:
        with self._progress_lock:
            images, faces, failed, busy = self._progress
            self._progress = [0, 0, 0, 0.0]
        if images or busy:
            db.add_progress(self.owner, int(images), int(faces), int(failed), float(busy))

    def _draining(self, db: WorkQueue) -> bool:
        return draining(db, self._drain, self.spec.coordinator_pid)

    def _claimer(self) -> None:
        """Claims units while there are any (or until a drain), and queues each item for the read stage
        with its read started (on threads here, or in the decoder process), then the unit's end."""
        spec = self.spec
        cap = spec.run.max_file_bytes
        db = open_queue(spec.queue_path)
        pool = ThreadPoolExecutor(max(1, spec.readers), thread_name_prefix="reader")
        try:
            while not self._stop.is_set():
                if self._draining(db):
                    break
                unit = db.claim(self.owner, spec.run.lease_seconds, spec.run.max_attempts)
                if unit is None:
                    if db.get_meta("listing_done") == "1" and db.remaining() == 0:
                        break
                    self._stop.wait(spec.poll_seconds)
                    continue
                with self._held_lock:
                    self._held.add(unit.id)
                n = len(unit.paths)
                state = UnitState(unit, time.time(), [None] * n, [None] * n if self.keep_images else [])
                for i, p in enumerate(unit.paths):  # the decoder process reads for itself
                    self._put(
                        self._read_q,
                        (state, i, p, None if self._proc else pool.submit(read_file, p, cap)),
                    )
                self._put(self._read_q, End(state))
                if unit.retried:  # run a suspect unit alone, so that a crash blames only it
                    while not self._stop.is_set() and unit.id in self._held:
                        self._stop.wait(0.05)
        except Abort:
            pass
        finally:
            with contextlib.suppress(Abort):
                self._put(self._read_q, STOP)
            # reads queued for the batcher are still waited for on a drain (cancelled, each would raise
            # CancelledError in the batch that holds it and fail the worker); dropped only on a failure
            pool.shutdown(wait=False, cancel_futures=self._fatal is not None)
            db.close()
