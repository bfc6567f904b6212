"""The PostgreSQL queue under failures: lost connections, lost replies, an unreachable server, and a
server restarted mid-run (a server this test starts itself from the binaries on the machine)."""

from __future__ import annotations

import gc
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from test_engine_queue import PG_SERVER, completed_ids, pg_url, start_workers

from facefleet.engine.queue import QueueUnavailable, enqueue_listing
from facefleet.engine.queue.postgres import PostgresQueue


@pytest.fixture
def pgq() -> Iterator[PostgresQueue]:
    q = PostgresQueue(pg_url(f"t_{uuid.uuid4().hex[:16]}"))
    yield q
    q.drop_schema()
    q.close()


def _lose_next_replies(monkeypatch: pytest.MonkeyPatch, n: int) -> list[int]:
    """The next ``n`` transactions commit, then their reply is 'lost' (an OperationalError, as if
    the connection broke after the server committed). Returns a counter of losses."""
    lost = [0]
    original = psycopg.Transaction.__exit__

    def exit_then_lose(self: psycopg.Transaction, *exc: object) -> object:
        out = original(self, *exc)  # type: ignore[arg-type]
        if exc[0] is None and lost[0] < n:
            lost[0] += 1
            raise psycopg.OperationalError("reply lost (test)")
        return out

    monkeypatch.setattr(psycopg.Transaction, "__exit__", exit_then_lose)
    return lost


def test_calls_retried_after_a_lost_reply_act_once(
    pgq: PostgresQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueue_listing(pgq, [f"p{i}" for i in range(6)], 2)
    pgq.register_worker("w", "w", "cpu", 1)
    lost = _lose_next_replies(monkeypatch, 1)
    u = pgq.claim("w", 30, 3)
    assert lost == [1] and u is not None and u.attempts == 1  # the retry found its own lease
    assert pgq.counts()["leased"]["units"] == 1
    lost[0] = 0
    assert pgq.complete(u.id, "w", {"images": 2})  # committed, reply lost, retried: still True
    lost[0] = 0
    pgq.add_progress("w", 2, 3, 0, 0.5)  # committed, reply lost, retried: added once
    monkeypatch.undo()
    (w,) = pgq.workers()
    assert (w["units"], w["images"], w["faces"]) == (1, 2, 3)
    kinds = [k for _, _, k, _ in pgq.events_after(0)]
    assert kinds.count("unit_started") == 1 and kinds.count("unit_done") == 1
    nxt = pgq.claim("w", 30, 3)
    assert nxt is not None and nxt.id != u.id and nxt.attempts == 1


def test_a_killed_connection_is_reopened(pgq: PostgresQueue) -> None:
    enqueue_listing(pgq, ["a", "b"], 1)
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        pid = pgq._s.run(lambda c, _: c.execute("SELECT pg_backend_pid()").fetchone())[0]  # type: ignore[index]
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    u = pgq.claim("w", 30, 3)
    assert u is not None and u.paths == ["a"]
    assert pgq._s.run(lambda c, _: c.execute("SELECT pg_backend_pid()").fetchone())[0] != pid  # type: ignore[index]


def test_a_forked_child_opens_its_own_connection(pgq: PostgresQueue) -> None:
    """A child inherits the queue object across fork: it must not use (or close) the parent's
    session, whose socket it shares."""
    enqueue_listing(pgq, ["a", "b"], 1)
    backend = pgq._s.run(lambda c, _: c.execute("SELECT pg_backend_pid()").fetchone())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            u = pgq.claim("child", 30, 3)
            mine = pgq._s.run(lambda c, _: c.execute("SELECT pg_backend_pid()").fetchone())
            os.write(w, f"{u.id if u else ''} {mine != backend}".encode())
            pgq.close()
            gc.collect()  # whatever the child dropped is collected here, not by the parent
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    uid, own = os.read(r, 200).decode().split()
    os.close(r)
    assert status == 0 and own == "True"
    assert pgq._s.run(lambda c, _: c.execute("SELECT pg_backend_pid()").fetchone()) == backend  # untouched
    assert pgq.state_of(uid) == "leased" and pgq.claim("parent", 30, 3) is not None


def test_an_unreachable_server_raises_after_the_retry_window() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(QueueUnavailable, match="no answer for 1 s"):
        PostgresQueue(f"postgresql://postgres@127.0.0.1:{port}/test?schema=x&retry_s=1")
    assert time.monotonic() - t0 < 10


# -- a server of our own, restarted mid-run ----------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """A throw-away PostgreSQL cluster from /usr/lib/postgresql/*/bin (run as the ``postgres`` user
    when we are root: the server refuses to run as root)."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
        found = bins[-1] if bins else shutil.which("pg_ctl")
        assert found, "no PostgreSQL server binaries (pg_ctl) on this machine"
        self.bin = Path(found).parent
        self.root = Path(tempfile.mkdtemp(prefix="ff_pg_"))
        self.port = _free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")
        self._pg(
            "initdb",
            "-D",
            str(self.root / "data"),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True, timeout=60
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg(
            "pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-o", opts, "-w", "start"
        )

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [
                *self.as_user,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.root / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def test_server_restart_mid_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    server = PgServer()
    try:
        server.start()
        url = f"postgresql://postgres@127.0.0.1:{server.port}/postgres?schema=run1&retry_s=60"
        q = PostgresQueue(url)
        n_units = 120
        enqueue_listing(q, [f"/in/{i}.jpg" for i in range(2 * n_units)], 2)
        procs = start_workers(url, tmp_path, 3, 0.02)  # ~0.8 s of work for each of 3 workers
        q.set_meta("go", "1")
        deadline = time.monotonic() + 60
        while q.counts()["done"]["units"] < n_units // 4:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.02)
        assert q.remaining() > n_units // 2  # mid-run
        server.stop()  # every connection is cut, in the middle of claims and completions
        cut = (server.root / "log").read_text().count("terminating connection due to administrator command")
        assert cut >= 3  # the workers' sessions (and ours) were ended by the shutdown
        time.sleep(1.0)
        server.start()
        assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
        counts = q.counts()
        assert counts["done"] == {"units": n_units, "images": 2 * n_units} and q.remaining() == 0
        ids = completed_ids(tmp_path, 3)
        assert len(ids) == n_units and len(set(ids)) == n_units  # each unit completed once
        done_events = [d["unit"] for _, _, k, d in q.events_after(0) if k == "unit_done"]
        assert sorted(done_events) == sorted(ids)
        q.close()
    finally:
        server.remove()
