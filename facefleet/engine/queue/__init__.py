"""Units of work and the durable work queue, behind one interface with two backends.

- :class:`~facefleet.engine.queue.sqlite.SqliteQueue`: the embedded default, one SQLite file in
  WAL mode (``OUT/_queue.sqlite``); every process must be on the host that holds the file.
- :class:`~facefleet.engine.queue.postgres.PostgresQueue`: PostgreSQL, shared by workers on many
  hosts; one schema per run (``postgresql://host/db?schema=NAME``).

PostgreSQL rather than Redis Streams: it gives the same transactional semantics as the SQLite
backend (one set of SQL ideas for leases, attempts and exactly-once completion, one test suite),
``FOR UPDATE SKIP LOCKED`` claims without contention, and its state is durable on disk, where a
Redis restart loses what was not yet persisted.

:func:`open_queue` picks the backend from a URL; :mod:`.listing` cuts a listing into units.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from facefleet.engine.queue.base import (
    QUEUE_FILE,
    STATES,
    QueueError,
    QueueStorageFull,
    QueueUnavailable,
    Unit,
    WorkQueue,
)
from facefleet.engine.queue.listing import enqueue_listing, iter_units, unit_id

if TYPE_CHECKING:
    from facefleet.engine.queue.postgres import PostgresQueue
    from facefleet.engine.queue.sqlite import SqliteQueue

__all__ = [
    "QUEUE_FILE",
    "STATES",
    "PostgresQueue",
    "QueueError",
    "QueueStorageFull",
    "QueueUnavailable",
    "SqliteQueue",
    "Unit",
    "WorkQueue",
    "enqueue_listing",
    "is_networked",
    "iter_units",
    "open_queue",
    "public_url",
    "unit_id",
]


def is_networked(url: str | Path) -> bool:
    """Whether ``url`` names a server that workers on other hosts can reach."""
    return str(url).startswith(("postgresql://", "postgres://"))


def public_url(url: str) -> str:
    """A queue URL without its password (run.json, reports and the service's job records are not
    secret)."""
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url)
    if u.password is None:
        return url
    host = u.hostname or ""
    netloc = f"{u.username}@{host}" + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def open_queue(url: str | Path, *, timeout: float = 60.0) -> WorkQueue:
    """Open (creating if needed) the queue at ``url``.

    - a plain path, or ``sqlite://PATH`` (``sqlite:///abs/q.sqlite``): the SQLite backend; ``timeout``
      is how long a write waits for another process's;
    - ``postgresql://...?schema=NAME``: the PostgreSQL backend (URL options in
      :mod:`facefleet.engine.queue.postgres`).
    Raises :class:`QueueError` for an unknown scheme or a queue that cannot be opened.
    """
    s = str(url)
    if is_networked(s):
        from facefleet.engine.queue.postgres import PostgresQueue

        return PostgresQueue(s)
    from facefleet.engine.queue.sqlite import SqliteQueue

    if s.startswith("sqlite://"):
        s = s[len("sqlite://") :]
    elif "://" in s:
        raise QueueError(f"unknown queue URL scheme in {s!r} (use a path, sqlite://PATH or postgresql://...)")
    if not s:
        raise QueueError("empty queue path")
    return SqliteQueue(s, timeout=timeout)


def __getattr__(name: str) -> type:
    # the backends import lazily: psycopg only when a PostgreSQL queue is used
    if name == "SqliteQueue":
        from facefleet.engine.queue.sqlite import SqliteQueue

        return SqliteQueue
    if name == "PostgresQueue":
        from facefleet.engine.queue.postgres import PostgresQueue

        return PostgresQueue
    raise AttributeError(name)
