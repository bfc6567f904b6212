"""The embedded queue: one SQLite file in WAL mode (by default ``OUT/_queue.sqlite``), one host.

Every write is a short ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so two
claimers never pick the same unit); several processes (coordinator, workers) share the file. WAL
needs shared memory, so all of them must run on the host that holds the file. Events are rows of
the ``events`` table, so a worker killed with SIGKILL cannot corrupt them (unlike a pipe).

Errors of the database (disk full, a locked or damaged file) are raised as :class:`QueueError`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from facefleet.engine.queue.base import (
    ERROR_CHARS,
    SCHEMA_VERSION,
    QueueError,
    QueueStorageFull,
    SqlQueue,
    Unit,
    clean_text,
    dump_json,
    halves,
)
from facefleet.engine.queue.listing import unit_id
from facefleet.sources.items import WorkItem, items_from_json, items_to_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    items TEXT NOT NULL,
    n INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    owner TEXT,
    lease_until REAL,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    stats TEXT,
    split_from TEXT
);
CREATE INDEX IF NOT EXISTS units_state ON units(state, seq);
CREATE INDEX IF NOT EXISTS units_attempts ON units(attempts) WHERE state IN ('pending', 'leased');
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    owner TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    device TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    last_seen REAL NOT NULL,
    units INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    faces INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    busy_s REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# SQLITE_FULL, SQLITE_READONLY: the file system cannot take the queue's writes
_STORAGE_FULL_CODES = frozenset({13, 8})  # SQLITE_FULL, SQLITE_READONLY (named in sqlite3 from 3.11)
_CLAIMABLE = "(state='pending' OR (state='leased' AND lease_until < ?))"
_UNIT_COLS = "seq, id, items, attempts, split_from"
# the first claimable unit: two walks of the (state, seq) index that stop at their first match, not
# a sort of every pending unit (which an OR over both states costs)
_FIRST_CLAIMABLE = f"""
SELECT * FROM (SELECT {_UNIT_COLS} FROM units WHERE state='pending' AND attempts < :max ORDER BY seq LIMIT 1)
UNION ALL
SELECT * FROM (SELECT {_UNIT_COLS} FROM units WHERE state='leased' AND lease_until < :now AND attempts < :max
               ORDER BY seq LIMIT 1)
ORDER BY seq LIMIT 1"""


def _unit(row: Sequence[Any], attempts_delta: int = 0) -> Unit:
    seq, uid, items, attempts, split_from = row
    return Unit(uid, seq, items_from_json(items), attempts + attempts_delta, split_from)


class SqliteQueue(SqlQueue):
    """The queue in one SQLite file. ``timeout``: seconds to wait for another process's write."""

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.url = f"sqlite://{self.path.resolve()}"
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise QueueError(f"cannot open the work queue {self.path}: {e}") from e
        with self._guard():
            self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(units)")}
            if not cols or "items" in cols:
                self._db.executescript(_SCHEMA)
        if cols and "items" not in cols:
            self._db.close()
            raise QueueError(
                f"{self.path} was written by an older facefleet (units as newline-joined paths); "
                "start the run over (--force)"
            )
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('queue_schema', ?)",
                (dump_json(SCHEMA_VERSION),),
            )

    def close(self) -> None:
        self._db.close()

    def now(self) -> float:
        return time.time()

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            full = (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _STORAGE_FULL_CODES  # primary code
            raise (QueueStorageFull if full else QueueError)(f"work queue {self.path}: {e}") from e

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._guard():
            return self._db.execute(query, args).fetchall()

    def reset(self) -> None:
        with self._tx() as db:
            for table in ("units", "events", "workers", "meta"):
                db.execute(f"DELETE FROM {table}")
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('queue_schema', ?)", (dump_json(SCHEMA_VERSION),)
            )

    # -- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key=?", (key,))
        return str(json.loads(rows[0][0])) if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, dump_json(value)))

    # -- producer --------------------------------------------------------------------------
    def add_units(self, units: Iterable[tuple[str, Sequence[WorkItem]]]) -> int:
        new = 0
        with self._tx() as db:
            for uid, items in units:
                cur = db.execute(
                    "INSERT OR IGNORE INTO units(id, items, n) VALUES (?, ?, ?)",
                    (uid, items_to_json(items), len(items)),
                )
                new += cur.rowcount
        return new

    # -- consumer --------------------------------------------------------------------------
    def claim(
        self, owner: str, lease_seconds: float, max_attempts: int, now: float | None = None
    ) -> Unit | None:
        now = self.now() if now is None else now
        with self._tx() as db:
            row = db.execute(_FIRST_CLAIMABLE, {"max": max_attempts, "now": now}).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE units SET state='leased', owner=?, lease_until=?, heartbeat=?, "
                "attempts=attempts+1 WHERE seq=?",
                (owner, now + lease_seconds, now, row[0]),
            )
            unit = _unit(row, attempts_delta=1)
            data = {"unit": unit.id, "owner": owner, "attempt": unit.attempts, "images": len(unit.items)}
            _event(db, "unit_started", data, now)
        return unit

    def heartbeat(self, owner: str, unit_ids: Iterable[str], lease_seconds: float) -> int:
        now = self.now()
        ids = list(unit_ids)
        if not ids:
            return 0
        with self._tx() as db:
            n = 0
            for uid in ids:
                n += db.execute(
                    "UPDATE units SET lease_until=?, heartbeat=? WHERE id=? AND owner=? AND state='leased'",
                    (now + lease_seconds, now, uid, owner),
                ).rowcount
            db.execute("UPDATE workers SET last_seen=? WHERE owner=?", (now, owner))
        return n

    def complete(self, uid: str, owner: str, stats: dict[str, Any]) -> bool:
        now = self.now()
        with self._tx() as db:
            n = db.execute(
                "UPDATE units SET state='done', owner=?, lease_until=NULL, stats=? "
                "WHERE id=? AND state!='done' AND state!='split'",
                (owner, dump_json(stats), uid),
            ).rowcount
            if n:
                db.execute("UPDATE workers SET units=units+1, last_seen=? WHERE owner=?", (now, owner))
                _event(db, "unit_done", {"unit": uid, "owner": owner, **stats}, now)
                return True
            row = db.execute("SELECT state, owner FROM units WHERE id=?", (uid,)).fetchone()
        return row is not None and row[0] == "done" and row[1] == owner

    def release(self, uid: str, owner: str, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE units SET state='pending', owner=NULL, lease_until=NULL, last_error=? "
                "WHERE id=? AND owner=? AND state='leased'",
                (clean_text(error, ERROR_CHARS), uid, owner),
            )

    def release_owner(self, owner: str, error: str) -> int:
        with self._tx() as db:
            seqs = [
                r[0]
                for r in db.execute(
                    "SELECT seq FROM units WHERE owner=? AND state='leased' ORDER BY seq", (owner,)
                ).fetchall()
            ]
            for k, seq in enumerate(seqs):
                db.execute(
                    "UPDATE units SET state='pending', owner=NULL, lease_until=NULL, last_error=?, "
                    "attempts=attempts-? WHERE seq=?",
                    (clean_text(error, ERROR_CHARS), 1 if k else 0, seq),
                )
            return len(seqs)

    def poisoned(self, max_attempts: int, now: float | None = None) -> list[Unit]:
        now = self.now() if now is None else now
        rows = self._rows(
            f"SELECT {_UNIT_COLS} FROM units INDEXED BY units_attempts "
            "WHERE state IN ('pending', 'leased') AND attempts >= ? "
            f"AND {_CLAIMABLE} ORDER BY seq",
            (max_attempts, now),
        )
        return [_unit(r) for r in rows]

    def fail(self, uid: str, error: str, stats: dict[str, Any]) -> None:
        now = self.now()
        text = clean_text(error, ERROR_CHARS)
        with self._tx() as db:
            n = db.execute(
                "UPDATE units SET state='failed', owner=NULL, lease_until=NULL, last_error=?, stats=? "
                "WHERE id=? AND state IN ('pending', 'leased')",
                (text, dump_json(stats), uid),
            ).rowcount
            if n:
                _event(db, "unit_failed", {"unit": uid, "error": text[:500], **stats}, now)

    def split(self, uid: str, now: float | None = None) -> list[str]:
        now = self.now() if now is None else now
        with self._tx() as db:
            row = db.execute(
                f"SELECT {_UNIT_COLS} FROM units WHERE id=? AND n > 1 AND "
                "(state IN ('pending', 'failed') OR (state='leased' AND lease_until < ?))",
                (uid, now),
            ).fetchone()
            if row is None:
                return []
            ids = []
            for half in halves(_unit(row).items):
                hid = unit_id(half)
                db.execute(
                    "INSERT OR IGNORE INTO units(id, items, n, split_from) VALUES (?, ?, ?, ?)",
                    (hid, items_to_json(half), len(half), uid),
                )
                ids.append(hid)
            db.execute("UPDATE units SET state='split', owner=NULL, lease_until=NULL WHERE id=?", (uid,))
            _event(db, "unit_split", {"unit": uid, "halves": ids}, now)
        return ids

    def last_error(self, uid: str) -> str | None:
        rows = self._rows("SELECT last_error FROM units WHERE id=?", (uid,))
        return rows[0][0] if rows else None

    # -- workers and events ----------------------------------------------------------------
    def register_worker(self, owner: str, name: str, device: str, pid: int) -> None:
        now = self.now()
        name, device = clean_text(name), clean_text(device)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO workers(owner, name, device, pid, started, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (owner, name, device, pid, now, now),
            )
            data = {"owner": owner, "worker": name, "device": device, "pid": pid}
            _event(db, "worker_started", data, now)

    def add_progress(self, owner: str, images: int, faces: int, failed: int, busy_s: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE workers SET images=images+?, faces=faces+?, failed=failed+?, busy_s=busy_s+?, "
                "last_seen=? WHERE owner=?",
                (images, faces, failed, busy_s, self.now(), owner),
            )

    def add_event(self, kind: str, data: dict[str, Any]) -> None:
        with self._tx() as db:
            _event(db, kind, data, self.now())

    def events_after(self, last_id: int) -> list[tuple[int, float, str, dict[str, Any]]]:
        rows = self._rows("SELECT id, t, kind, data FROM events WHERE id > ? ORDER BY id", (last_id,))
        return [(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def workers(self) -> list[dict[str, Any]]:
        with self._guard():
            cur = self._db.execute("SELECT * FROM workers ORDER BY started")
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    # -- inspection ------------------------------------------------------------------------
    def unit_stats(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        with self._guard():  # streamed: a run may have millions of units
            cur = self._db.execute(
                "SELECT id, state, stats FROM units WHERE state IN ('done', 'failed') ORDER BY seq"
            )
            for uid, state, stats in cur:
                yield uid, state, json.loads(stats) if stats else {}

    def state_of(self, uid: str) -> str | None:
        rows = self._rows("SELECT state FROM units WHERE id=?", (uid,))
        return rows[0][0] if rows else None


def _event(db: sqlite3.Connection, kind: str, data: dict[str, Any], t: float) -> None:
    db.execute("INSERT INTO events(t, kind, data) VALUES (?, ?, ?)", (t, kind, dump_json(data)))
