"""Workers started by someone else: ``facefleet worker --queue URL --out DIR`` on any host (a shell
loop, torchrun, Slurm, Kubernetes). The coordinator of such a run lists the input into a queue that
every host reaches (PostgreSQL), reaps poison units and writes the report; it starts no process.

Each handle this executor gives stands for "the workers elsewhere": it runs while the queue still
has units or its listing is not done, and ends (exit code 0) once the queue is finished. ``kill``
asks the run to drain through the queue (external workers then finish their units and leave).
"""

from __future__ import annotations

import contextlib
import time

from facefleet.engine.executors.base import Executor, WorkerHandle
from facefleet.engine.queue import QueueError, WorkQueue, open_queue
from facefleet.engine.worker.spec import WorkerSpec


class QueueWatch(WorkerHandle):
    """The external workers of a run, as one handle: done when the queue is (checked at most once a
    second)."""

    def __init__(self, spec: WorkerSpec, every: float = 1.0) -> None:
        self.spec = spec
        self._every = every
        self._q: WorkQueue | None = None
        self._code: int | None = None
        self._checked = 0.0

    @property
    def pid(self) -> int | None:
        return None

    @property
    def exitcode(self) -> int | None:
        now = time.monotonic()
        if self._code is None and now - self._checked >= self._every:
            self._checked = now
            try:
                q = self._q = self._q or open_queue(self.spec.queue_path)
                if q.get_meta("listing_done") == "1" and q.remaining() == 0:
                    self._code = 0
            except QueueError:
                pass  # the server is away: the workers wait for it too
        return self._code

    def kill(self) -> None:
        with contextlib.suppress(QueueError):
            q = self._q = self._q or open_queue(self.spec.queue_path)
            q.set_meta("drain", "1")
        self._code = 0 if self._code is None else self._code

    def join(self, timeout: float | None = None) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        while self.exitcode is None and (end is None or time.monotonic() < end):
            time.sleep(min(self._every, 0.2))
        if self._q is not None and self._code is not None:
            self._q.close()
            self._q = None


class ExternalExecutor(Executor):
    """Starts nothing: the run's workers are ``facefleet worker`` processes on any host."""

    name = "external"

    def start(self, spec: WorkerSpec) -> QueueWatch:
        return QueueWatch(spec)
