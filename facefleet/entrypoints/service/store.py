"""The service's durable state, one SQLite file in its data folder: jobs and per-key usage.

A job's record is what ``GET /v1/jobs/{id}`` shows and what a restarted server resumes from (its
work itself lives in the engine's queue inside the job's OUT, so a resumed job continues where it
stopped, every input once). Each write is one transaction, so a SIGKILL leaves either the old or the
new record, never half of one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

#: a job's states; the first two are "active" (resumed when the server starts)
ACTIVE = ("queued", "running")
FINAL = ("completed", "failed", "cancelled")
JOB_KINDS = ("photos", "video")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, key TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL,
    inputs TEXT NOT NULL, out TEXT NOT NULL, options TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, started REAL, finished REAL,
    done INTEGER NOT NULL DEFAULT 0, total INTEGER, images INTEGER NOT NULL DEFAULT 0,
    faces INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    rate REAL NOT NULL DEFAULT 0, error TEXT
);
CREATE TABLE IF NOT EXISTS usage (key TEXT PRIMARY KEY, images INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class JobRecord:
    """A service job. ``inputs``: the paths it reads (uploads are saved under the job's folder first);
    ``options``: its formats and settings as submitted; ``done``/``total``: images (or video frames)
    finished and listed (None until known); ``rate``: images or frames per second lately."""

    id: str
    key: str
    kind: str
    state: str
    inputs: tuple[str, ...]
    out: str
    options: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0
    started: float | None = None
    finished: float | None = None
    done: int = 0
    total: int | None = None
    images: int = 0
    faces: int = 0
    failed: int = 0
    rate: float = 0.0
    error: str | None = None

    @property
    def progress(self) -> float | None:
        """Fraction done, 0-1 (1 once completed; None while the total is unknown)."""
        if self.state == "completed":
            return 1.0
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    @property
    def eta_seconds(self) -> float | None:
        if self.state != "running" or not self.total or self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    def to_api(self, queue: str | None = None) -> dict[str, Any]:
        """The job as the API and the UI show it; ``queue``: its networked queue's URL (without a
        password), for ``facefleet worker --queue URL --out OUT`` on other hosts to serve it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "progress": self.progress,
            "done": self.done,
            "total": self.total,
            "images": self.images,
            "faces": self.faces,
            "failed": self.failed,
            "rate": self.rate,
            "eta_s": self.eta_seconds,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
            "options": self.options,
            "results": f"/v1/jobs/{self.id}/results",
            **({"queue": queue, "out": self.out} if queue else {}),
        }


_COLUMNS = [f.name for f in fields(JobRecord)]


class ServiceStore:
    """Jobs and usage in ``data_dir/service.sqlite`` (WAL; thread-safe through one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- jobs ------------------------------------------------------------------------------
    def add(self, job: JobRecord) -> JobRecord:
        now = time.time()
        job = replace(job, created=job.created or now, updated=now)
        row = _row(job)
        with self._tx() as db:
            db.execute(f"INSERT INTO jobs ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(row))})", row)
        return job

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Set fields of a job (``updated`` too) and return the new record."""
        changes["updated"] = time.time()
        for k in ("inputs", "options"):
            if k in changes:
                changes[k] = json.dumps(list(changes[k]) if k == "inputs" else changes[k])
        sets = ", ".join(f"{k} = ?" for k in changes)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*changes.values(), job_id])
            got = db.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if got is None:
            raise KeyError(job_id)
        return _record(got)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            got = self._db.execute(
                f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return None if got is None else _record(got)

    def list(
        self,
        key: str | None = None,
        states: tuple[str, ...] | None = None,
        *,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[JobRecord]:
        """Jobs, newest first (of one key, in some states, if given): ``limit`` of them from ``offset``."""
        where, args = _where(key, states)
        sql = f"SELECT {','.join(_COLUMNS)} FROM jobs{where} ORDER BY created DESC, id"
        if limit is not None or offset:
            sql += " LIMIT ? OFFSET ?"
            args += [-1 if limit is None else int(limit), int(offset)]
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_record(r) for r in rows]

    def count(self, key: str | None = None, states: tuple[str, ...] | None = None) -> int:
        """How many jobs :meth:`list` has for ``key`` and ``states``."""
        where, args = _where(key, states)
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM jobs{where}", args).fetchone()[0])

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {str(s): int(n) for s, n in rows}

    # -- usage (quotas) ----------------------------------------------------------------------
    def used(self, key: str) -> int:
        with self._lock:
            got = self._db.execute("SELECT images FROM usage WHERE key = ?", (key,)).fetchone()
        return int(got[0]) if got else 0

    def add_usage(self, counts: dict[str, int]) -> None:
        """Add images to keys' usage, in one transaction."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO usage (key, images) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET images = images + excluded.images",
                list(counts.items()),
            )


class UsageMeter:
    """Images per key against their quotas, counted in memory and written to the store every
    ``flush_s`` seconds (a transaction per request would cost more than the request: ~2 ms of
    fsync). A server killed between two writes forgets at most that many seconds of counts."""

    def __init__(self, store: ServiceStore, flush_s: float = 1.0) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._used: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(flush_s,), name="usage", daemon=True)
        self._thread.start()

    def used(self, key: str) -> int:
        with self._lock:
            if key not in self._used:
                self._used[key] = self.store.used(key)
            return self._used[key]

    def charge(self, key: str, images: int, quota: int) -> bool:
        """Count ``images`` for ``key`` unless that would pass ``quota`` (0: unlimited); True when
        counted. Atomic among this server's requests."""
        used = self.used(key)
        with self._lock:
            used = self._used[key]
            if quota and used + images > quota:
                return False
            self._used[key] = used + images
            self._pending[key] = self._pending.get(key, 0) + images
        return True

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self.store.add_usage(pending)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.flush()

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self.flush()


def _row(job: JobRecord) -> list[Any]:
    values = []
    for name in _COLUMNS:
        v = getattr(job, name)
        values.append(json.dumps(list(v) if name == "inputs" else v) if name in ("inputs", "options") else v)
    return values


def _where(key: str | None, states: tuple[str, ...] | None) -> tuple[str, list[Any]]:
    """The WHERE clause (with its leading space, or empty) and arguments of a key and states filter."""
    where, args = [], []
    if key is not None:
        where.append("key = ?")
        args.append(key)
    if states:
        where.append(f"state IN ({','.join('?' * len(states))})")
        args.extend(states)
    return (f" WHERE {' AND '.join(where)}" if where else ""), args


def _record(row: tuple[Any, ...]) -> JobRecord:
    d = dict(zip(_COLUMNS, row))
    d["inputs"] = tuple(json.loads(d["inputs"]))
    d["options"] = json.loads(d["options"])
    return JobRecord(**d)
