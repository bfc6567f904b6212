"""A PostgreSQL session that survives server restarts: one connection per process, transactions
retried after a lost connection for a bounded time, and the server's clock.

Used by :mod:`facefleet.engine.queue.postgres`; the URL options are documented there.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from facefleet.engine.queue.base import QueueError, QueueUnavailable

T = TypeVar("T")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# libpq defaults unless the URL sets them: give up connecting after 5 s, notice a dead peer ~25 s
_LIBPQ_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def parse_url(url: str) -> tuple[str, str, float]:
    """(libpq conninfo URL, schema, retry seconds) of a queue URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise QueueError(f"not a PostgreSQL URL: {url!r}")
    opts = dict(parse_qsl(parts.query, keep_blank_values=True))
    schema = opts.pop("schema", "")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise QueueError(
            f"{url!r}: name the run's schema, e.g. ?schema=run1 (lower-case letters, digits, _; "
            f"at most 63), got {schema!r}"
        )
    try:
        retry_s = float(opts.pop("retry_s", "60"))
    except ValueError as e:
        raise QueueError(f"{url!r}: retry_s must be a number of seconds") from e
    for k, v in _LIBPQ_DEFAULTS.items():
        opts.setdefault(k, v)
    return urlunsplit(parts._replace(query=urlencode(opts, quote_via=quote))), schema, retry_s


class PgSession:
    """The connection of one process (and thread) to one schema, with ``search_path`` set to it.

    An instance inherited across ``fork`` opens its own connection in the child and leaves the
    parent's session alone.
    """

    def __init__(self, conninfo: str, schema: str, retry_s: float) -> None:
        self.conninfo, self.schema, self.retry_s = conninfo, schema, retry_s
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = os.getpid()
        self._offset = 0.0

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and self._pid != os.getpid():
            # inherited across fork: never use or close it here (psycopg does not finalize a
            # connection in a process other than its own, so dropping it is safe)
            self._conn, self._pid = None, os.getpid()
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.conninfo, autocommit=True)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            t0 = time.time()
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
            t1 = time.time()
            self._offset = float(row[0]) - (t0 + t1) / 2 if row else 0.0
            self._conn = conn
        return self._conn

    def run(self, fn: Callable[[psycopg.Connection[Any], int], T]) -> T:
        """``fn(conn, attempt)`` in one transaction. After a lost connection (or a deadlock, or any
        other transient server error: psycopg's OperationalError) it reconnects and runs ``fn``
        again with attempt + 1, backing off from 50 ms to 2 s, for up to ``retry_s`` seconds; then
        raises :class:`QueueUnavailable`. Other database errors raise :class:`QueueError`."""
        attempt, delay, deadline = 0, 0.05, time.monotonic() + self.retry_s
        while True:
            try:
                conn = self._connection()
                with conn.transaction():
                    return fn(conn, attempt)
            except psycopg.OperationalError as e:
                if self._conn is not None and self._conn.closed:
                    self._conn = None
                if time.monotonic() + delay > deadline:
                    raise QueueUnavailable(
                        f"work queue {self.where()}: no answer for {self.retry_s:g} s: {e}"
                    ) from e
                time.sleep(delay)
                attempt, delay = attempt + 1, min(2 * delay, 2.0)
            except psycopg.Error as e:
                raise QueueError(f"work queue {self.where()}: {e}".strip()) from e

    def now(self) -> float:
        """The server's clock, from the offset measured when the connection was opened."""
        if self._conn is None:
            self.run(lambda c, _: None)
        return time.time() + self._offset

    def where(self) -> str:
        p = urlsplit(self.conninfo)
        return f"{p.hostname}:{p.port or 5432}{p.path} schema {self.schema}"

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
