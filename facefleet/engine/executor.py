"""Executors start worker processes; the coordinator only sees :class:`WorkerHandle` objects.

``LocalProcessExecutor`` starts one process per worker on this host (start method 'spawn': no
CUDA state or threads are inherited). Another executor (Ray actors, processes launched by
torchrun/Slurm on many hosts) plugs in by implementing :class:`Executor` and registering in
:data:`EXECUTORS`; workers coordinate only through the queue file, so they need a shared file
system (or, later, a networked queue) and nothing else.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
from abc import ABC, abstractmethod
from typing import Any

from facefleet.engine.worker import WorkerSpec, worker_main


class WorkerHandle(ABC):
    """A started worker."""

    spec: WorkerSpec

    @property
    @abstractmethod
    def pid(self) -> int | None: ...

    @property
    @abstractmethod
    def exitcode(self) -> int | None:
        """None while running; the exit status (negative: killed by that signal) after."""

    @abstractmethod
    def kill(self) -> None: ...

    @abstractmethod
    def join(self, timeout: float | None = None) -> None: ...


class Executor(ABC):
    """Starts workers somewhere."""

    name = "abstract"

    @abstractmethod
    def start(self, spec: WorkerSpec) -> WorkerHandle: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release executor resources (after every worker has exited)."""


class _ProcessHandle(WorkerHandle):
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

    def join(self, timeout: float | None = None) -> None:
        self._proc.join(timeout)


class LocalProcessExecutor(Executor):
    """One OS process per worker on this host, started with 'spawn'."""

    name = "local"

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        proc = self._ctx.Process(
            target=worker_main, args=(spec,), name=f"facefleet-{spec.name}", daemon=False
        )
        proc.start()
        return _ProcessHandle(spec, proc)


EXECUTORS: dict[str, type[Executor]] = {"local": LocalProcessExecutor}


def make_executor(name: str | None) -> Executor:
    key = (name or "local").lower()
    try:
        return EXECUTORS[key]()
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; available: {', '.join(sorted(EXECUTORS))}") from None
