"""The work queue's interface and its semantics, shared by every backend.

A *unit* is a run of items (:mod:`facefleet.sources`) with a deterministic id. Unit states:
``pending`` -> ``leased`` (owner, lease expiry, heartbeat) -> ``done`` or ``failed``. A unit
whose leases did not finish ``max_attempts`` times is *poisoned*; the coordinator either fails it
or, when it holds more than one item, :meth:`WorkQueue.split` s it in two halves (state ``split``,
hidden from counts) that are queued with fresh attempts, so that one file that kills its worker
is cut down to a unit of one item and quarantined alone.

Guarantees every backend keeps (tests/test_engine_queue.py runs one suite over all of them):

- two claimers never hold the same unit at once; a lease ends by completion, release, expiry,
  or :meth:`~WorkQueue.release_owner`;
- a unit is ``done`` exactly once: :meth:`~WorkQueue.complete` is idempotent for the owner that
  completed it (a call retried after a lost reply answers True again) and answers False to anyone
  else;
- events have increasing ids in commit order, so a reader that remembers the last id it saw
  misses none.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from facefleet.sources.items import WorkItem, as_item, image_sources

QUEUE_FILE = "_queue.sqlite"
SCHEMA_VERSION = "2"  # 1: paths joined with newlines; 2: items as JSON, split units
STATES = ("pending", "leased", "done", "failed")
ERROR_CHARS = 2000  # last_error is cut to this many characters


class QueueError(RuntimeError):
    """The queue cannot do what was asked (disk full, server gone, incompatible file): one line."""


class QueueStorageFull(QueueError):
    """The queue's storage cannot take more writes (disk full, read-only file system): an output
    problem that a restart does not mend."""


class QueueUnavailable(QueueError):
    """The queue's server did not answer within the retry window."""


@dataclass(frozen=True)
class Unit:
    """A leased (or poisoned) unit of work.

    ``split_from`` is the id of the unit this one is a half of (None for a listed unit).
    """

    id: str
    seq: int
    items: tuple[WorkItem, ...]
    attempts: int
    split_from: str | None = None

    def __post_init__(self) -> None:
        # items may be given as a list of image sources (call sites that predate items)
        if not isinstance(self.items, tuple) or (self.items and isinstance(self.items[0], str)):
            object.__setattr__(self, "items", tuple(as_item(i) for i in self.items))

    @property
    def paths(self) -> list[str]:
        """Sources of the unit's image items (a TypeError if it holds another kind)."""
        return image_sources(self.items)

    @property
    def retried(self) -> bool:
        """An earlier lease of this unit, or of the unit it was split from, ended in a crash or an
        expiry: run it alone, so that a crash blames only it."""
        return self.attempts > 1 or self.split_from is not None


def halves(items: Sequence[WorkItem]) -> tuple[tuple[WorkItem, ...], tuple[WorkItem, ...]]:
    """The two halves :meth:`WorkQueue.split` queues (the first one the shorter when odd)."""
    k = len(items) // 2
    return tuple(items[:k]), tuple(items[k:])


def clean_text(s: str, limit: int | None = None) -> str:
    """Free text (errors, names) as a database takes it: lone surrogates from undecodable file
    names become ``\\udcXX`` escapes and NULs ``\\x00``, cut to ``limit`` characters."""
    s = s.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\x00")
    return s if limit is None else s[:limit]


def dump_json(data: Any) -> str:
    """JSON text for stats, events and meta values: ASCII, so any string survives any database."""
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


class WorkQueue(ABC):
    """The durable queue of one run. One instance per process and per thread that uses it
    concurrently (connections are not shared); open one with :func:`facefleet.engine.queue.open_queue`.

    Times are seconds since the epoch on the queue's clock (:meth:`now`); methods that take
    ``now`` use it instead (tests drive leases with it).
    """

    url: str  # what open_queue() takes to open this same queue (for workers)

    # -- lifetime --------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def now(self) -> float:
        """The queue's clock (the server's for a networked queue, so hosts agree on leases)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything of this run: units, events, workers, meta (``--force``)."""

    # -- meta ------------------------------------------------------------------------------
    @abstractmethod
    def get_meta(self, key: str, default: str | None = None) -> str | None: ...

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    # -- producer --------------------------------------------------------------------------
    @abstractmethod
    def add_units(self, units: Iterable[tuple[str, Sequence[WorkItem]]]) -> int:
        """Insert (unit id, items) pairs; ids already present (in any state, split included) are
        ignored. Returns how many were new."""

    # -- consumer --------------------------------------------------------------------------
    @abstractmethod
    def claim(
        self, owner: str, lease_seconds: float, max_attempts: int, now: float | None = None
    ) -> Unit | None:
        """Lease the first unit (in listing order) that is pending, or leased with an expired
        lease, and has fewer than ``max_attempts`` attempts; count one attempt. Emits
        ``unit_started``. None when there is none right now."""

    @abstractmethod
    def heartbeat(self, owner: str, unit_ids: Iterable[str], lease_seconds: float) -> int:
        """Extend the leases this owner still holds among ``unit_ids``; returns how many it holds."""

    @abstractmethod
    def complete(self, uid: str, owner: str, stats: dict[str, Any]) -> bool:
        """Mark a unit done (after its manifest file is written), from any state but done, by
        whoever finishes first. True if this owner's completion is the one recorded (also when the
        same call is repeated); False if another owner completed it. Emits ``unit_done`` once."""

    @abstractmethod
    def release(self, uid: str, owner: str, error: str) -> None:
        """Give a unit back after an error (if this owner still leases it); it keeps the attempt
        and is retried until ``max_attempts``."""

    @abstractmethod
    def release_owner(self, owner: str, error: str) -> int:
        """Give back every unit a dead worker held; returns how many.

        Units flow through a worker in lease order, so the oldest one it held was the one on the
        device: it keeps the attempt, the ones merely prefetched get theirs refunded (a poison
        unit must not take its innocent neighbours down with it). Retried units are then run
        without prefetching (see :attr:`Unit.retried`), which makes the blame exact.
        """

    @abstractmethod
    def poisoned(self, max_attempts: int, now: float | None = None) -> list[Unit]:
        """Units that used up their attempts and are not running: to be failed or split."""

    @abstractmethod
    def fail(self, uid: str, error: str, stats: dict[str, Any]) -> None:
        """Mark a pending or leased unit failed (emits ``unit_failed``); a no-op on a unit that is
        done, failed or split."""

    @abstractmethod
    def split(self, uid: str, now: float | None = None) -> list[str]:
        """Replace a unit of n > 1 items that is not running (pending, failed, or leased with an
        expired lease) by its two :func:`halves`, queued with no attempts; emits ``unit_split``.
        Returns the halves' ids; [] (and nothing changes) for a unit of one item, an unknown or
        done unit, or one whose lease is live."""

    @abstractmethod
    def last_error(self, uid: str) -> str | None: ...

    # -- workers and events ----------------------------------------------------------------
    @abstractmethod
    def register_worker(self, owner: str, name: str, device: str, pid: int) -> None:
        """Record a worker (emits ``worker_started``)."""

    @abstractmethod
    def add_progress(self, owner: str, images: int, faces: int, failed: int, busy_s: float) -> None:
        """Add to a worker's running totals."""

    @abstractmethod
    def add_event(self, kind: str, data: dict[str, Any]) -> None: ...

    @abstractmethod
    def events_after(self, last_id: int) -> list[tuple[int, float, str, dict[str, Any]]]:
        """(id, time, kind, data) of the events after ``last_id``, in order."""

    @abstractmethod
    def last_event_id(self) -> int:
        """The id of the newest event (0 when there is none)."""

    @abstractmethod
    def workers(self) -> list[dict[str, Any]]:
        """One row per registered worker: owner, name, device, pid, started, last_seen, units,
        images, faces, failed, busy_s; oldest first."""

    # -- inspection ------------------------------------------------------------------------
    @abstractmethod
    def counts(self) -> dict[str, dict[str, int]]:
        """{state: {"units": n, "images": items}} for each of :data:`STATES` (split units are
        left out: their halves count)."""

    @abstractmethod
    def remaining(self) -> int:
        """Units pending or leased."""

    @abstractmethod
    def unit_stats(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(unit id, state, stats) of finished (done or failed) units, in listing order."""

    @abstractmethod
    def state_of(self, uid: str) -> str | None: ...


class SqlQueue(WorkQueue):
    """A :class:`WorkQueue` kept in SQL tables (units, events, workers, meta): the inspection queries
    both backends run alike, over the backend's :meth:`_rows`."""

    @abstractmethod
    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of one statement (the backend's errors as :class:`QueueError`)."""

    def last_event_id(self) -> int:
        return int(self._rows("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])

    def counts(self) -> dict[str, dict[str, int]]:
        out = {s: {"units": 0, "images": 0} for s in STATES}
        for state, units, images in self._rows("SELECT state, COUNT(*), SUM(n) FROM units GROUP BY state"):
            if state in out:
                out[state] = {"units": int(units), "images": int(images or 0)}
        return out

    def remaining(self) -> int:
        return int(self._rows("SELECT COUNT(*) FROM units WHERE state IN ('pending', 'leased')")[0][0])
