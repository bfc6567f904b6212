"""The networked queue: PostgreSQL, shared by workers on many hosts.

URL: ``postgresql://[user@]host[:port]/database?schema=NAME[&retry_s=SECONDS][&libpq options]``.
``schema`` (required) names the run: each run keeps its tables in its own schema, created on first
use, so many runs share one server. ``retry_s`` (default 60) bounds how long a call retries while
the server is unreachable (a restart, a failover, a network blip) before it raises
:class:`QueueUnavailable`. Other query parameters go to libpq (``connect_timeout``, ``sslmode``,
``keepalives_idle``...); TCP keepalives default on, so a dead peer is noticed within ~30 s.
Each write waits for the server's WAL flush; ``options=-c%20synchronous_commit%3Doff`` makes calls
several times cheaper on a slow disk, at the price of the last few hundred ms of queue writes if the
server crashes (units then run again; a unit's manifest file is replaced, never duplicated).

Cost: events are ordered by a lock held until commit, so event-writing calls (claim, complete)
run one at a time: about 1 / (commit latency) of them per second for the whole fleet, i.e. a few
hundred units per second on a server with ~2 ms commits (benchmarks/queue_cost.py measures it).

Same ideas as the SQLite backend, in SQL: a claim is one ``UPDATE`` of the first claimable row
taken with ``FOR UPDATE SKIP LOCKED`` (claimers never wait on each other's rows); completion is
``UPDATE ... WHERE state != 'done'`` (exactly once: a second finisher's update matches no row).
Calls run in transactions that are retried after a lost connection; the ones that are not
naturally idempotent carry a token, so a retry after a lost reply does not act twice: a claim
returns the unit its first try leased, progress is not added twice, a completion answers True to
the owner that made it. Events take a transaction-scoped advisory lock before their insert, so
their ids commit in order and a reader polling ``id > last`` misses none. Times are the server's
clock (its offset is measured at connect), so hosts agree on leases.

One instance per process and per thread (a connection is not shared; see
:class:`~facefleet.engine.queue.pgconn.PgSession` for the connection and its retries).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from facefleet.engine.queue.base import (
    ERROR_CHARS,
    SCHEMA_VERSION,
    QueueError,
    SqlQueue,
    Unit,
    clean_text,
    dump_json,
    halves,
)
from facefleet.engine.queue.listing import unit_id
from facefleet.engine.queue.pgconn import PgSession, parse_url
from facefleet.sources.items import WorkItem, items_from_json, items_to_json

_TABLES = (
    """CREATE TABLE IF NOT EXISTS units (
        seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, items TEXT NOT NULL, n INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending', owner TEXT, lease_until DOUBLE PRECISION,
        heartbeat DOUBLE PRECISION, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        stats TEXT, split_from TEXT, claim_token TEXT)""",
    "CREATE INDEX IF NOT EXISTS units_open ON units(seq) WHERE state IN ('pending', 'leased')",
    "CREATE INDEX IF NOT EXISTS units_owner ON units(owner) WHERE state = 'leased'",
    "CREATE INDEX IF NOT EXISTS units_attempts ON units(attempts) WHERE state IN ('pending', 'leased')",
    """CREATE TABLE IF NOT EXISTS events (
        id BIGSERIAL PRIMARY KEY, t DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS workers (
        owner TEXT PRIMARY KEY, name TEXT NOT NULL, device TEXT NOT NULL, pid INTEGER NOT NULL,
        started DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
        units INTEGER NOT NULL DEFAULT 0, images BIGINT NOT NULL DEFAULT 0,
        faces BIGINT NOT NULL DEFAULT 0, failed BIGINT NOT NULL DEFAULT 0,
        busy_s DOUBLE PRECISION NOT NULL DEFAULT 0, progress_token TEXT)""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_CLAIMABLE = "(state = 'pending' OR (state = 'leased' AND lease_until < %(now)s))"
_UNIT_COLS = "seq, id, items, attempts, split_from"
_WORKER_COLS = (
    "owner",
    "name",
    "device",
    "pid",
    "started",
    "last_seen",
    "units",
    "images",
    "faces",
    "failed",
    "busy_s",
)


def _unit(row: Sequence[Any]) -> Unit:
    seq, uid, items, attempts, split_from = row
    return Unit(uid, int(seq), items_from_json(items), int(attempts), split_from)


class PostgresQueue(SqlQueue):
    """The queue of one run in a PostgreSQL schema. ``retry_s`` overrides the URL's."""

    def __init__(self, url: str, *, retry_s: float | None = None) -> None:
        conninfo, self.schema, url_retry = parse_url(url)
        self.url = url
        self._s = PgSession(conninfo, self.schema, url_retry if retry_s is None else retry_s)
        key = hashlib.sha256(b"facefleet-events:" + self.schema.encode()).digest()[:8]
        self._event_key = int.from_bytes(key, "big", signed=True)
        self._run = self._s.run
        self._run(self._create)

    def _create(self, conn: psycopg.Connection[Any], attempt: int) -> None:
        """Create the run's schema and tables unless they exist. (Never runs DDL on existing tables:
        ``CREATE INDEX IF NOT EXISTS`` would wait for every claim in flight.)"""
        row = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
        if not (row and row[0]):
            key = hashlib.sha256(b"facefleet-schema:" + self.schema.encode()).digest()[:8]
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(key, "big", signed=True),))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            for stmt in _TABLES:
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('queue_schema', %s) ON CONFLICT DO NOTHING",
                (dump_json(SCHEMA_VERSION),),
            )
        row = conn.execute("SELECT value FROM meta WHERE key = 'queue_schema'").fetchone()
        if row is not None and json.loads(row[0]) != SCHEMA_VERSION:
            raise QueueError(
                f"schema {self.schema} holds a queue of format {json.loads(row[0])}, this facefleet "
                f"reads {SCHEMA_VERSION}: start the run over (--force) or name another schema"
            )

    def close(self) -> None:
        self._s.close()

    def drop_schema(self) -> None:
        """Delete the run's schema and everything in it (tests, clean-up of a finished run)."""
        self._run(
            lambda c, _: c.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )
        )

    def now(self) -> float:
        return self._s.now()

    def reset(self) -> None:
        def tx(c: psycopg.Connection[Any], _: int) -> None:
            c.execute("TRUNCATE units, events, workers, meta")
            c.execute(
                "INSERT INTO meta(key, value) VALUES ('queue_schema', %s)", (dump_json(SCHEMA_VERSION),)
            )

        self._run(tx)

    def _rows(self, query: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        return self._run(lambda c, _: c.execute(query, args).fetchall())

    def _event(self, c: psycopg.Connection[Any], kind: str, data: dict[str, Any], t: float) -> None:
        c.execute(
            "INSERT INTO events(t, kind, data) SELECT %s, %s, %s FROM pg_advisory_xact_lock(%s)",
            (t, kind, dump_json(data), self._event_key),
        )

    # -- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = %s", (key,))
        return str(json.loads(rows[0][0])) if rows else default

    def set_meta(self, key: str, value: str) -> None:
        self._run(
            lambda c, _: c.execute(
                "INSERT INTO meta(key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key, dump_json(value)),
            )
        )

    # -- producer --------------------------------------------------------------------------
    def add_units(self, units: Iterable[tuple[str, Sequence[WorkItem]]]) -> int:
        rows = [(uid, items_to_json(items), len(items)) for uid, items in units]
        if not rows:
            return 0
        ids, items, ns = (list(col) for col in zip(*rows))

        def tx(c: psycopg.Connection[Any], _: int) -> int:
            cur = c.execute(
                "INSERT INTO units(id, items, n) SELECT i, it, n FROM unnest(%s::text[], %s::text[], "
                "%s::int[]) WITH ORDINALITY AS u(i, it, n, k) ORDER BY k ON CONFLICT (id) DO NOTHING",
                (ids, items, ns),
            )
            return cur.rowcount

        return self._run(tx)

    # -- consumer --------------------------------------------------------------------------
    def claim(
        self, owner: str, lease_seconds: float, max_attempts: int, now: float | None = None
    ) -> Unit | None:
        token = uuid.uuid4().hex

        def tx(c: psycopg.Connection[Any], attempt: int) -> Unit | None:
            t = self.now() if now is None else now
            if attempt:  # the first try may have leased a unit and lost the reply
                row = c.execute(
                    f"SELECT {_UNIT_COLS} FROM units WHERE owner = %s AND state = 'leased' "
                    "AND claim_token = %s",
                    (owner, token),
                ).fetchone()
                if row is not None:
                    return _unit(row)
            row = c.execute(
                f"""WITH c AS (SELECT seq FROM units WHERE attempts < %(max)s AND {_CLAIMABLE}
                    ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
                UPDATE units u SET state = 'leased', owner = %(owner)s, lease_until = %(until)s,
                    heartbeat = %(now)s, attempts = u.attempts + 1, claim_token = %(token)s
                FROM c WHERE u.seq = c.seq RETURNING u.seq, u.id, u.items, u.attempts, u.split_from""",
                {"max": max_attempts, "now": t, "owner": owner, "until": t + lease_seconds, "token": token},
            ).fetchone()
            if row is None:
                return None
            unit = _unit(row)
            data = {"unit": unit.id, "owner": owner, "attempt": unit.attempts, "images": len(unit.items)}
            self._event(c, "unit_started", data, t)
            return unit

        return self._run(tx)

    def heartbeat(self, owner: str, unit_ids: Iterable[str], lease_seconds: float) -> int:
        ids = list(unit_ids)
        if not ids:
            return 0

        def tx(c: psycopg.Connection[Any], _: int) -> int:
            t = self.now()
            n = c.execute(
                "UPDATE units SET lease_until = %s, heartbeat = %s WHERE id = ANY(%s) AND "
                "owner = %s AND state = 'leased'",
                (t + lease_seconds, t, ids, owner),
            ).rowcount
            c.execute("UPDATE workers SET last_seen = %s WHERE owner = %s", (t, owner))
            return n

        return self._run(tx)

    def complete(self, uid: str, owner: str, stats: dict[str, Any]) -> bool:
        def tx(c: psycopg.Connection[Any], _: int) -> bool:
            t = self.now()
            n = c.execute(
                "UPDATE units SET state = 'done', owner = %s, lease_until = NULL, stats = %s "
                "WHERE id = %s AND state NOT IN ('done', 'split')",
                (owner, dump_json(stats), uid),
            ).rowcount
            if n:
                c.execute("UPDATE workers SET units = units + 1, last_seen = %s WHERE owner = %s", (t, owner))
                self._event(c, "unit_done", {"unit": uid, "owner": owner, **stats}, t)
                return True
            row = c.execute("SELECT state, owner FROM units WHERE id = %s", (uid,)).fetchone()
            return row is not None and row[0] == "done" and row[1] == owner

        return self._run(tx)

    def release(self, uid: str, owner: str, error: str) -> None:
        self._run(
            lambda c, _: c.execute(
                "UPDATE units SET state = 'pending', owner = NULL, lease_until = NULL, last_error = %s "
                "WHERE id = %s AND owner = %s AND state = 'leased'",
                (clean_text(error, ERROR_CHARS), uid, owner),
            )
        )

    def release_owner(self, owner: str, error: str) -> int:
        def tx(c: psycopg.Connection[Any], _: int) -> int:
            seqs = [
                r[0]
                for r in c.execute(
                    "SELECT seq FROM units WHERE owner = %s AND state = 'leased' ORDER BY seq FOR UPDATE",
                    (owner,),
                ).fetchall()
            ]
            if seqs:
                c.execute(
                    "UPDATE units SET state = 'pending', owner = NULL, lease_until = NULL, last_error = %s, "
                    "attempts = attempts - CASE WHEN seq = %s THEN 0 ELSE 1 END WHERE seq = ANY(%s)",
                    (clean_text(error, ERROR_CHARS), seqs[0], seqs),
                )
            return len(seqs)

        return self._run(tx)

    def poisoned(self, max_attempts: int, now: float | None = None) -> list[Unit]:
        t = self.now() if now is None else now
        rows = self._rows(
            f"SELECT {_UNIT_COLS} FROM units WHERE state IN ('pending', 'leased') AND attempts >= %(max)s "
            f"AND {_CLAIMABLE} ORDER BY seq",
            {"max": max_attempts, "now": t},
        )
        return [_unit(r) for r in rows]

    def fail(self, uid: str, error: str, stats: dict[str, Any]) -> None:
        text = clean_text(error, ERROR_CHARS)

        def tx(c: psycopg.Connection[Any], _: int) -> None:
            n = c.execute(
                "UPDATE units SET state = 'failed', owner = NULL, lease_until = NULL, last_error = %s, "
                "stats = %s WHERE id = %s AND state IN ('pending', 'leased')",
                (text, dump_json(stats), uid),
            ).rowcount
            if n:
                self._event(c, "unit_failed", {"unit": uid, "error": text[:500], **stats}, self.now())

        self._run(tx)

    def split(self, uid: str, now: float | None = None) -> list[str]:
        def tx(c: psycopg.Connection[Any], _: int) -> list[str]:
            t = self.now() if now is None else now
            row = c.execute(
                f"SELECT {_UNIT_COLS} FROM units WHERE id = %(id)s AND n > 1 AND "
                "(state IN ('pending', 'failed') OR (state = 'leased' AND lease_until < %(now)s)) "
                "FOR UPDATE",
                {"id": uid, "now": t},
            ).fetchone()
            if row is None:
                return []
            ids = []
            for half in halves(_unit(row).items):
                ids.append(unit_id(half))
                c.execute(
                    "INSERT INTO units(id, items, n, split_from) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (id) DO NOTHING",
                    (ids[-1], items_to_json(half), len(half), uid),
                )
            c.execute(
                "UPDATE units SET state = 'split', owner = NULL, lease_until = NULL WHERE id = %s", (uid,)
            )
            self._event(c, "unit_split", {"unit": uid, "halves": ids}, t)
            return ids

        return self._run(tx)

    def last_error(self, uid: str) -> str | None:
        rows = self._rows("SELECT last_error FROM units WHERE id = %s", (uid,))
        return rows[0][0] if rows else None

    # -- workers and events ----------------------------------------------------------------
    def register_worker(self, owner: str, name: str, device: str, pid: int) -> None:
        name, device = clean_text(name), clean_text(device)

        def tx(c: psycopg.Connection[Any], _: int) -> None:
            t = self.now()
            c.execute(
                """INSERT INTO workers(owner, name, device, pid, started, last_seen)
                VALUES (%(o)s, %(n)s, %(d)s, %(p)s, %(t)s, %(t)s) ON CONFLICT (owner) DO UPDATE SET
                name = %(n)s, device = %(d)s, pid = %(p)s, started = %(t)s, last_seen = %(t)s, units = 0,
                images = 0, faces = 0, failed = 0, busy_s = 0, progress_token = NULL""",
                {"o": owner, "n": name, "d": device, "p": pid, "t": t},
            )
            self._event(
                c, "worker_started", {"owner": owner, "worker": name, "device": device, "pid": pid}, t
            )

        self._run(tx)

    def add_progress(self, owner: str, images: int, faces: int, failed: int, busy_s: float) -> None:
        token = uuid.uuid4().hex  # a retry after a lost reply must not add twice
        self._run(
            lambda c, _: c.execute(
                "UPDATE workers SET images = images + %s, faces = faces + %s, failed = failed + %s, "
                "busy_s = busy_s + %s, last_seen = %s, progress_token = %s "
                "WHERE owner = %s AND progress_token IS DISTINCT FROM %s",
                (images, faces, failed, busy_s, self.now(), token, owner, token),
            )
        )

    def add_event(self, kind: str, data: dict[str, Any]) -> None:
        self._run(lambda c, _: self._event(c, kind, data, self.now()))

    def events_after(self, last_id: int) -> list[tuple[int, float, str, dict[str, Any]]]:
        rows = self._rows("SELECT id, t, kind, data FROM events WHERE id > %s ORDER BY id", (last_id,))
        return [(int(r[0]), float(r[1]), r[2], json.loads(r[3])) for r in rows]

    def workers(self) -> list[dict[str, Any]]:
        rows = self._rows(f"SELECT {', '.join(_WORKER_COLS)} FROM workers ORDER BY started")
        return [dict(zip(_WORKER_COLS, r)) for r in rows]

    # -- inspection ------------------------------------------------------------------------
    def unit_stats(self, page: int = 10_000) -> Iterator[tuple[str, str, dict[str, Any]]]:
        last = 0
        while True:  # in pages by seq: bounded memory, and each page survives a reconnect
            rows = self._rows(
                "SELECT seq, id, state, stats FROM units WHERE seq > %s AND "
                "state IN ('done', 'failed') ORDER BY seq LIMIT %s",
                (last, page),
            )
            for _, uid, state, stats in rows:
                yield uid, state, json.loads(stats) if stats else {}
            if len(rows) < page:
                return
            last = rows[-1][0]

    def state_of(self, uid: str) -> str | None:
        rows = self._rows("SELECT state FROM units WHERE id = %s", (uid,))
        return rows[0][0] if rows else None
