"""Units of work and the durable work queue (SQLite in WAL mode, kept in the output directory).

A *unit* is a run of up to U consecutive inputs of the (sorted, streamed) listing. Its id is a
hash of its paths, so the same listing always gives the same units and the same manifest file
names. Unit states: ``pending`` -> ``leased`` (owner, lease expiry, heartbeat) -> ``done`` or
``failed`` (after ``max_attempts`` leases that did not finish: a poison unit).

Every transaction is short; several processes (coordinator, one or two workers per device) share the
file. Events (unit_started/unit_done, worker_started) are rows of the ``events`` table so that a
worker killed with SIGKILL cannot corrupt them, unlike a pipe.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUEUE_FILE = "_queue.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    paths TEXT NOT NULL,
    n INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    owner TEXT,
    lease_until REAL,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    stats TEXT
);
CREATE INDEX IF NOT EXISTS units_state ON units(state, seq);
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


def unit_id(paths: Iterable[str]) -> str:
    """Deterministic id of a unit: first 16 hex digits of sha256 over its paths (NUL-separated)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def iter_units(paths: Iterable[str], unit_size: int) -> Iterator[tuple[str, list[str]]]:
    """Cut a stream of paths into (unit id, paths) of ``unit_size`` (the last may be shorter).
    Holds one unit in memory at a time."""
    if unit_size < 1:
        raise ValueError(f"unit size must be >= 1, got {unit_size}")
    chunk: list[str] = []
    for p in paths:
        chunk.append(p)
        if len(chunk) == unit_size:
            yield unit_id(chunk), chunk
            chunk = []
    if chunk:
        yield unit_id(chunk), chunk


def enqueue_listing(
    queue: WorkQueue,
    paths: Iterable[str],
    unit_size: int,
    *,
    stop: Callable[[], bool] | None = None,
    flush_every: int = 16,
) -> tuple[int, int]:
    """Stream ``paths`` into ``queue`` as units; marks the listing done at the end (unless
    ``stop()`` turned true first). Memory: ``flush_every`` units at most. Returns (images, units)."""
    n_images = n_units = 0
    buf: list[tuple[str, list[str]]] = []
    last = time.monotonic()
    for uid, unit in iter_units(paths, unit_size):
        if stop is not None and stop():
            return n_images, n_units
        buf.append((uid, unit))
        n_images += len(unit)
        n_units += 1
        if len(buf) >= flush_every or time.monotonic() - last > 0.5:
            queue.add_units(buf)
            queue.set_meta("listed_images", str(n_images))
            buf = []
            last = time.monotonic()
    if buf:
        queue.add_units(buf)
    queue.set_meta("listed_images", str(n_images))
    queue.set_meta("listing_done", "1")
    queue.add_event("listing_done", {"images": n_images, "units": n_units})
    return n_images, n_units


@dataclass(frozen=True)
class Unit:
    """A leased unit of work."""

    id: str
    seq: int
    paths: list[str]
    attempts: int

    @property
    def retried(self) -> bool:
        """An earlier lease of this unit ended in a crash or an expiry."""
        return self.attempts > 1


class WorkQueue:
    """The durable queue of one run directory. One instance per process (and per thread that
    uses it concurrently: sqlite3 connections are not shared between threads here)."""

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(
            str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------
    def _tx(self) -> _Tx:
        return _Tx(self._db)

    # -- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- producer --------------------------------------------------------------------------
    def add_units(self, units: Iterable[tuple[str, list[str]]]) -> int:
        """Insert units (already present ids are ignored); returns how many were new."""
        new = 0
        with self._tx() as db:
            for uid, paths in units:
                cur = db.execute(
                    "INSERT OR IGNORE INTO units(id, paths, n) VALUES (?, ?, ?)",
                    (uid, "\n".join(paths), len(paths)),
                )
                new += cur.rowcount
        return new

    # -- consumer --------------------------------------------------------------------------
    def claim(
        self, owner: str, lease_seconds: float, max_attempts: int, now: float | None = None
    ) -> Unit | None:
        """Lease the first pending unit, or one whose lease expired, with fewer than
        ``max_attempts`` attempts. Returns None when there is none right now."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "SELECT seq, id, paths, attempts FROM units WHERE attempts < ? AND "
                "(state='pending' OR (state='leased' AND lease_until < ?)) ORDER BY seq LIMIT 1",
                (max_attempts, now),
            ).fetchone()
            if row is None:
                return None
            seq, uid, paths, attempts = row
            db.execute(
                "UPDATE units SET state='leased', owner=?, lease_until=?, heartbeat=?, attempts=attempts+1 "
                "WHERE seq=?",
                (owner, now + lease_seconds, now, seq),
            )
            plist = paths.split("\n") if paths else []
            _event(
                db,
                "unit_started",
                {"unit": uid, "owner": owner, "attempt": attempts + 1, "images": len(plist)},
                now,
            )
        return Unit(id=uid, seq=seq, paths=plist, attempts=attempts + 1)

    def heartbeat(self, owner: str, unit_ids: Iterable[str], lease_seconds: float) -> int:
        """Extend the leases this owner still holds; returns how many it still holds."""
        now = time.time()
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
        """Mark a unit done (after its manifest file is written). Returns False if it was already
        done (another worker finished the same unit after this one's lease expired)."""
        now = time.time()
        with self._tx() as db:
            n = db.execute(
                "UPDATE units SET state='done', owner=?, lease_until=NULL, stats=? "
                "WHERE id=? AND state!='done'",
                (owner, json.dumps(stats), uid),
            ).rowcount
            if n:
                db.execute(
                    "UPDATE workers SET units=units+1, last_seen=? WHERE owner=?",
                    (now, owner),
                )
                _event(db, "unit_done", {"unit": uid, "owner": owner, **stats}, now)
        return bool(n)

    def release(self, uid: str, owner: str, error: str) -> None:
        """Give a unit back after an error (it is retried until ``max_attempts``)."""
        with self._tx() as db:
            db.execute(
                "UPDATE units SET state='pending', owner=NULL, lease_until=NULL, last_error=? "
                "WHERE id=? AND owner=? AND state='leased'",
                (error[:2000], uid, owner),
            )

    def release_owner(self, owner: str, error: str) -> int:
        """Give back every unit a dead worker held; returns how many.

        Units flow through a worker in lease order, so the oldest one it held was the one on
        the device: it keeps the attempt, the ones merely prefetched get theirs refunded (a poison
        unit must not take its innocent neighbours down with it). Retried units are then run
        without prefetching (see :attr:`Unit.retried`), which makes the blame exact.
        """
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
                    (error[:2000], 1 if k else 0, seq),
                )
            return len(seqs)

    def poisoned(self, max_attempts: int, now: float | None = None) -> list[Unit]:
        """Units that used up their attempts and are not running: to be marked failed."""
        now = time.time() if now is None else now
        rows = self._db.execute(
            "SELECT seq, id, paths, attempts FROM units WHERE attempts >= ? AND "
            "(state='pending' OR (state='leased' AND lease_until < ?)) ORDER BY seq",
            (max_attempts, now),
        ).fetchall()
        return [Unit(id=r[1], seq=r[0], paths=r[2].split("\n") if r[2] else [], attempts=r[3]) for r in rows]

    def fail(self, uid: str, error: str, stats: dict[str, Any]) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE units SET state='failed', owner=NULL, lease_until=NULL, last_error=?, stats=? "
                "WHERE id=?",
                (error[:2000], json.dumps(stats), uid),
            )
            _event(db, "unit_failed", {"unit": uid, "error": error[:500], **stats}, now)

    def last_error(self, uid: str) -> str | None:
        row = self._db.execute("SELECT last_error FROM units WHERE id=?", (uid,)).fetchone()
        return row[0] if row else None

    # -- workers and events ----------------------------------------------------------------
    def register_worker(self, owner: str, name: str, device: str, pid: int) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO workers(owner, name, device, pid, started, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (owner, name, device, pid, now, now),
            )
            _event(db, "worker_started", {"owner": owner, "worker": name, "device": device, "pid": pid}, now)

    def add_progress(self, owner: str, images: int, faces: int, failed: int, busy_s: float) -> None:
        self._db.execute(
            "UPDATE workers SET images=images+?, faces=faces+?, failed=failed+?, busy_s=busy_s+?, "
            "last_seen=? WHERE owner=?",
            (images, faces, failed, busy_s, time.time(), owner),
        )

    def add_event(self, kind: str, data: dict[str, Any]) -> None:
        with self._tx() as db:
            _event(db, kind, data, time.time())

    def events_after(self, last_id: int) -> list[tuple[int, float, str, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT id, t, kind, data FROM events WHERE id > ? ORDER BY id", (last_id,)
        ).fetchall()
        return [(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def workers(self) -> list[dict[str, Any]]:
        cur = self._db.execute("SELECT * FROM workers ORDER BY started")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=False)) for r in cur.fetchall()]

    # -- inspection ------------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        """{state: {"units": n, "images": m}} over every state."""
        out = {s: {"units": 0, "images": 0} for s in ("pending", "leased", "done", "failed")}
        for state, units, images in self._db.execute(
            "SELECT state, COUNT(*), SUM(n) FROM units GROUP BY state"
        ):
            out[state] = {"units": int(units), "images": int(images or 0)}
        return out

    def remaining(self) -> int:
        """Units not done or failed."""
        row = self._db.execute("SELECT COUNT(*) FROM units WHERE state IN ('pending', 'leased')").fetchone()
        return int(row[0])

    def unit_stats(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(unit id, state, stats) of finished units."""
        for uid, state, stats in self._db.execute(
            "SELECT id, state, stats FROM units WHERE state IN ('done', 'failed') ORDER BY seq"
        ):
            yield uid, state, json.loads(stats) if stats else {}

    def state_of(self, uid: str) -> str | None:
        row = self._db.execute("SELECT state FROM units WHERE id=?", (uid,)).fetchone()
        return row[0] if row else None


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): takes the write lock up front so two
    claimers never pick the same unit."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _event(db: sqlite3.Connection, kind: str, data: dict[str, Any], t: float) -> None:
    db.execute("INSERT INTO events(t, kind, data) VALUES (?, ?, ?)", (t, kind, json.dumps(data)))
