"""Executors start a run's workers; the coordinator only sees :class:`WorkerHandle` objects.

- ``local`` (:class:`LocalProcessExecutor`): one process per worker on this host (the default);
- ``external`` (:class:`ExternalExecutor`): none; ``facefleet worker --queue URL --out DIR``
  processes on any number of hosts do the work (:mod:`facefleet.engine.worker.cli`).

Another executor (Ray actors, ...) implements :class:`Executor` and joins :data:`EXECUTORS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from facefleet.engine.executors.base import Executor, WorkerHandle
from facefleet.engine.executors.external import ExternalExecutor, QueueWatch
from facefleet.engine.executors.local import LocalProcessExecutor, ProcessHandle

EXECUTORS: Mapping[str, type[Executor]] = MappingProxyType(
    {"local": LocalProcessExecutor, "external": ExternalExecutor}
)

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExternalExecutor",
    "LocalProcessExecutor",
    "ProcessHandle",
    "QueueWatch",
    "WorkerHandle",
    "make_executor",
]


def make_executor(name: str | None) -> Executor:
    key = (name or "local").lower()
    try:
        return EXECUTORS[key]()
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; available: {', '.join(sorted(EXECUTORS))}") from None
