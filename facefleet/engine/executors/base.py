"""The executor interface: how a coordinator starts workers and watches them (:class:`WorkerHandle`).

Workers coordinate only through the queue, so an executor is free to start them anywhere: processes
of this host (:mod:`.local`), or nowhere at all, when workers are started by someone else on other
hosts and the coordinator only lists the input and watches the queue (:mod:`.external`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from facefleet.engine.worker.spec import WorkerSpec


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
