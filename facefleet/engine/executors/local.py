"""Workers as OS processes of this host, started with 'spawn' (no CUDA state or threads inherited)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
from typing import Any

from facefleet.engine.executors.base import Executor, WorkerHandle
from facefleet.engine.worker.spec import WorkerSpec


class ProcessHandle(WorkerHandle):
    """A worker process started by :class:`LocalProcessExecutor`."""

    def __init__(self, spec: WorkerSpec, proc: Any) -> None:
        self.spec = spec
        self._proc = proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    def kill(self) -> None:
        if self._proc.is_alive() and self._proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: an external worker drains (finishes its units and leaves)."""
        if self._proc.is_alive() and self._proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)

    def join(self, timeout: float | None = None) -> None:
        self._proc.join(timeout)


class LocalProcessExecutor(Executor):
    """One OS process per worker on this host, started with 'spawn' and given its spec as JSON
    (:meth:`WorkerSpec.to_json`: the one form in which settings reach a worker process)."""

    name = "local"

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")

    def start(self, spec: WorkerSpec) -> ProcessHandle:
        from facefleet.engine.worker.main import worker_main

        proc = self._ctx.Process(
            target=worker_main, args=(spec.to_json(),), name=f"facefleet-{spec.name}", daemon=False
        )
        proc.start()
        return ProcessHandle(spec, proc)
