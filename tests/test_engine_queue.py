"""The work queue's semantics, one suite over both backends (SQLite file, PostgreSQL at
127.0.0.1:5432), plus units of work and the manifest writer (no worker processes).

The PostgreSQL tests fail, not skip, when the server does not answer: CI runs them against a real
server (FACEFLEET_TEST_PG overrides the server URL). Each test gets its own schema, dropped after.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import subprocess
import sys
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from facefleet.engine.manifest import SCHEMA, output_location, read_manifest, results_table, write_unit
from facefleet.engine.queue import (
    QueueError,
    Unit,
    WorkQueue,
    enqueue_listing,
    iter_units,
    open_queue,
    unit_id,
)
from facefleet.sources import ImageItem, items_from_json, items_to_json
from facefleet.types import Face, ImageResult, Pose

PG_SERVER = os.environ.get("FACEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


class QueueRef:
    """One test's queue: its URL, and the instances opened on it (closed at teardown)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened: list[WorkQueue] = []

    def open(self) -> WorkQueue:
        q = open_queue(self.url)
        self.opened.append(q)
        return q


# A worker process: waits for meta go=1, claims units until the queue is drained, "works" WORK_S
# seconds on each, and writes the ids it completed (complete() said True) to OUT, one a line.
WORKER_SCRIPT = """
import sys, time
from facefleet.engine.queue import open_queue
url, name, out, work_s = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
q = open_queue(url)
while q.get_meta("go") != "1":  # start together
    time.sleep(0.01)
with open(out, "w") as f:
    while True:
        u = q.claim(name, 60, 3)
        if u is None:
            if q.get_meta("listing_done") == "1" and q.remaining() == 0:
                break
            time.sleep(0.02)
            continue
        time.sleep(work_s)
        if q.complete(u.id, name, {"images": len(u.items)}):
            f.write(u.id + "\\n")
            f.flush()
q.close()
"""


def start_workers(url: str, out_dir: Path, n: int, work_s: float) -> list[subprocess.Popen[bytes]]:
    """``n`` worker processes (WORKER_SCRIPT) on the queue at ``url``; ids to out_dir/w{i}.txt."""
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, url, f"w{i}", str(out_dir / f"w{i}.txt"), str(work_s)]
        )
        for i in range(n)
    ]


def completed_ids(out_dir: Path, n: int) -> list[str]:
    return [line for i in range(n) for line in (out_dir / f"w{i}.txt").read_text().splitlines()]


def pg_url(schema: str, retry_s: float = 3.0) -> str:
    return f"{PG_SERVER}?schema={schema}&retry_s={retry_s:g}"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueRef]:
    """A fresh, empty queue of each backend."""
    if request.param == "sqlite":
        ref = QueueRef(str(tmp_path / "_queue.sqlite"))
    else:
        ref = QueueRef(pg_url(f"t_{uuid.uuid4().hex[:16]}"))
    yield ref
    for q in ref.opened:
        q.close()
    if request.param == "postgres":
        from facefleet.engine.queue.postgres import PostgresQueue

        q = PostgresQueue(ref.url)
        q.drop_schema()
        q.close()


def _listed(ref: QueueRef, paths: list[str], unit_size: int = 4) -> WorkQueue:
    q = ref.open()
    enqueue_listing(q, paths, unit_size)
    return q


# -- units and items ---------------------------------------------------------------------------
def test_unit_ids_are_deterministic_and_local() -> None:
    paths = [f"/data/img{i:04d}.jpg" for i in range(10)]
    a = list(iter_units(paths, 4))
    b = list(iter_units(iter(ImageItem(p) for p in paths), 4))
    assert a == b
    assert [len(u) for _, u in a] == [4, 4, 2]
    assert all(isinstance(i, ImageItem) for _, u in a for i in u)
    assert len({uid for uid, _ in a}) == 3
    changed = [*paths[:5], "/data/other.jpg", *paths[6:]]
    c = list(iter_units(changed, 4))
    assert c[0][0] == a[0][0] and c[2][0] == a[2][0] and c[1][0] != a[1][0]
    assert unit_id(["a", "bc"]) != unit_id(["ab", "c"])  # item boundaries matter
    assert unit_id(["a\nb"]) != unit_id(["a", "b"])
    with pytest.raises(ValueError):
        list(iter_units(paths, 0))


def test_work_items_json_round_trip() -> None:
    items = (ImageItem("/d/a\nb.jpg"), ImageItem("/d/caf\udce9.jpg"), ImageItem("s3://b/ü €.png"))
    text = items_to_json(items)
    assert text.isascii() and "\n" not in text
    assert items_from_json(text) == items
    with pytest.raises(ValueError, match="unknown work item kind 'video'"):
        items_from_json('[{"kind": "video", "source": "x"}]')
    with pytest.raises(ValueError):
        ImageItem("")
    u = Unit("u1", 0, ["a.jpg", "b\nc.jpg"], 1)  # type: ignore[arg-type]  # sources are image items
    assert u.items == (ImageItem("a.jpg"), ImageItem("b\nc.jpg")) and u.paths == ["a.jpg", "b\nc.jpg"]


# -- the semantic suite, both backends -----------------------------------------------------------
def test_claim_in_listing_order_complete_and_relisting_idempotent(backend: QueueRef) -> None:
    paths = [f"p{i}" for i in range(10)]
    q = _listed(backend, paths)
    assert q.get_meta("listing_done") == "1" and q.get_meta("listed_images") == "10"
    assert q.counts()["pending"] == {"units": 3, "images": 10} and q.remaining() == 3
    units = [q.claim(f"w{k}", 30, 3) for k in range(3)]
    assert [u.paths for u in units if u] == [paths[:4], paths[4:8], paths[8:]]
    assert all(u is not None and u.attempts == 1 and not u.retried for u in units)
    assert q.claim("w9", 30, 3) is None
    assert units[0] is not None and q.complete(units[0].id, "w0", {"images": 4})
    assert q.state_of(units[0].id) == "done" and q.state_of("nope") is None
    enqueue_listing(q, paths, 4)  # listing the same input again inserts nothing new
    assert q.counts()["done"]["units"] == 1 and q.counts()["leased"]["units"] == 2
    assert q.remaining() == 2
    kinds = [k for _, _, k, _ in q.events_after(0)]
    assert kinds.count("unit_started") == 3 and kinds.count("unit_done") == 1


def test_lease_expiry_requeues_to_another_worker(backend: QueueRef) -> None:
    q = _listed(backend, [f"p{i}" for i in range(4)])  # one unit
    u = q.claim("dead", lease_seconds=5, max_attempts=3, now=1000.0)
    assert u is not None
    assert q.claim("alive", 5, 3, now=1004.0) is None  # lease still valid
    again = q.claim("alive", 5, 3, now=1006.0)  # expired: re-queued
    assert again is not None and again.id == u.id and again.attempts == 2 and again.retried
    assert q.heartbeat("dead", [u.id], 5) == 0  # the dead owner lost it
    assert q.heartbeat("alive", [u.id], 5) == 1


def test_heartbeat_keeps_a_lease(backend: QueueRef) -> None:
    q = _listed(backend, ["a", "b", "c", "d", "e"], unit_size=2)
    t = q.now()
    u1, u2 = q.claim("w", 2, 3, now=t), q.claim("w", 2, 3, now=t)
    assert u1 and u2
    assert q.heartbeat("w", [u1.id, u2.id, "unknown"], 60) == 2
    assert q.heartbeat("other", [u1.id], 60) == 0
    later = q.claim("x", 2, 3, now=t + 30)  # without the heartbeat both leases would have expired
    assert later is not None and later.id not in (u1.id, u2.id)
    assert q.claim("x", 2, 3, now=t + 30) is None
    assert q.heartbeat("w", [], 60) == 0


def test_poison_unit_after_max_attempts(backend: QueueRef) -> None:
    q = _listed(backend, ["a", "b"])
    for k in range(2):
        u = q.claim(f"w{k}", 1, max_attempts=2, now=100.0 + 10 * k)
        assert u is not None and u.attempts == k + 1
    assert q.poisoned(2, now=110.5) == []  # the second lease is still live
    assert q.claim("w3", 1, 2, now=200.0) is None  # used up
    bad = q.poisoned(2, now=200.0)
    assert [(b.paths, b.attempts) for b in bad] == [(["a", "b"], 2)]
    q.fail(bad[0].id, "boom", {"images": 2, "failed": 2})
    q.fail(bad[0].id, "boom", {"images": 2, "failed": 2})  # once only
    assert q.counts()["failed"] == {"units": 1, "images": 2} and q.remaining() == 0
    assert q.last_error(bad[0].id) == "boom"
    assert [k for _, _, k, _ in q.events_after(0)].count("unit_failed") == 1
    assert list(q.unit_stats()) == [(bad[0].id, "failed", {"images": 2, "failed": 2})]


def test_release_keeps_the_attempt(backend: QueueRef) -> None:
    q = _listed(backend, ["a"])
    u = q.claim("w", 30, 3)
    assert u is not None
    q.release(u.id, "other", "not mine")  # only the owner can release
    assert q.state_of(u.id) == "leased"
    q.release(u.id, "w", "decoder crashed")
    again = q.claim("w2", 30, 3)
    assert again is not None and again.attempts == 2 and q.last_error(u.id) == "decoder crashed"


def test_complete_exactly_once_when_owners_race(backend: QueueRef) -> None:
    q = _listed(backend, [f"p{i}" for i in range(4)])
    u = q.claim("w0", 1, 3, now=100.0)
    assert u is not None and q.claim("w1", 1, 3, now=200.0) is not None  # w0's lease expired
    for w in ("w0", "w1"):
        q.register_worker(w, w, "cpu", 1)
    answers: dict[str, bool] = {}
    go = threading.Barrier(2)

    def finish(owner: str) -> None:
        mine = backend.open()  # a connection of its own, as another process would have
        go.wait()
        answers[owner] = mine.complete(u.id, owner, {"images": 4, "by": owner})

    threads = [threading.Thread(target=finish, args=(w,)) for w in ("w0", "w1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers.values()) == [False, True]
    winner = next(w for w, ok in answers.items() if ok)
    assert q.complete(u.id, winner, {"images": 4})  # the same call repeated (a lost reply): True
    assert not q.complete(u.id, "w2", {"images": 4})
    events = [d for _, _, k, d in q.events_after(0) if k == "unit_done"]
    assert [d["by"] for d in events] == [winner]
    assert {w["owner"]: w["units"] for w in q.workers()} == {winner: 1, ({"w0", "w1"} - {winner}).pop(): 0}
    assert list(q.unit_stats()) == [(u.id, "done", {"images": 4, "by": winner})]


def test_release_owner_refunds_prefetched_units(backend: QueueRef) -> None:
    q = _listed(backend, [f"p{i}" for i in range(12)])
    a = q.claim("w1", 30, 3)
    b = q.claim("w1", 30, 3)
    c = q.claim("w2", 30, 3)
    assert a and b and c and a.id != b.id
    assert q.release_owner("w1", "worker died") == 2
    assert q.release_owner("w1", "worker died") == 0
    assert q.counts()["pending"]["units"] == 2 and q.state_of(c.id) == "leased"
    assert q.last_error(a.id) == "worker died" and q.last_error(b.id) == "worker died"
    # the unit on the device keeps its attempt, the prefetched one gets it back
    a2, b2 = q.claim("w3", 30, 3), q.claim("w3", 30, 3)
    assert a2 and b2 and (a2.id, a2.attempts, a2.retried) == (a.id, 2, True)
    assert (b2.id, b2.attempts, b2.retried) == (b.id, 1, False)


def test_split_bisects_a_poison_unit(backend: QueueRef) -> None:
    """A unit whose item kills its worker is cut in halves until the one item fails alone; every
    other item is done, each exactly once."""
    paths = [f"/in/{i}.jpg" for i in range(7)]
    bad = "/in/4.jpg"
    q = _listed(backend, paths, unit_size=7)
    t, done, failed, steps = 1000.0, [], [], 0
    while q.remaining():
        steps += 1
        assert steps < 100
        t += 10
        u = q.claim("w", 5, 2, now=t)
        if u is not None:
            if bad not in u.paths:
                assert q.complete(u.id, "w", {"images": len(u.paths)})
                done += u.paths
            continue  # else: the worker "dies" and its lease expires
        for p in q.poisoned(2, now=t + 10):
            if not q.split(p.id, now=t + 10):  # one item: it is the culprit
                assert p.paths == [bad]
                q.fail(p.id, "worker died", {"images": 1, "failed": 1})
                failed += p.paths
    assert sorted(done) == sorted(set(paths) - {bad}) and failed == [bad]
    counts = q.counts()  # split parents are not counted: their halves are
    assert counts["done"]["images"] == 6 and counts["failed"] == {"units": 1, "images": 1}
    assert "split" not in counts
    kinds = [k for _, _, k, _ in q.events_after(0)]
    assert kinds.count("unit_split") == 3  # 7 -> 3+4 -> 2+2 -> 1+1
    enqueue_listing(q, paths, 7)  # a re-listing does not bring the split unit back
    assert q.remaining() == 0


def test_split_rules(backend: QueueRef) -> None:
    q = _listed(backend, ["a", "b", "c", "d", "e"], unit_size=5)
    assert q.split("unknown") == []
    u = q.claim("w", 30, 3, now=100.0)
    assert u is not None
    assert q.split(u.id, now=110.0) == []  # its lease is live
    first, second = q.split(u.id, now=200.0)  # expired: may be split
    assert q.state_of(u.id) == "split" and q.counts()["pending"] == {"units": 2, "images": 5}
    h1, h2 = q.claim("w2", 30, 3, now=300.0), q.claim("w2", 30, 3, now=300.0)
    assert h1 and h2 and (h1.id, h2.id) == (first, second)
    assert (h1.paths, h2.paths) == (["a", "b"], ["c", "d", "e"])
    assert h1.attempts == 1 and h1.retried and h1.split_from == u.id  # fresh attempts, run alone
    assert not q.complete(u.id, "w", {})  # the split unit is never done itself
    assert q.complete(h1.id, "w2", {})
    assert q.split(h1.id, now=400.0) == []  # done
    one = q.split(h2.id, now=400.0)
    assert len(one) == 2 and q.split(one[0], now=400.0) == []  # a unit of one item stays


def test_meta_events_and_workers(backend: QueueRef) -> None:
    q = backend.open()
    assert q.get_meta("nope") is None and q.get_meta("nope", "d") == "d"
    q.set_meta("root", "/data/caf\udce9 \n x")
    q.set_meta("root", "/data/caf\udce9 \n y")
    assert q.get_meta("root") == "/data/caf\udce9 \n y"
    assert q.last_event_id() == 0 and q.events_after(0) == []
    q.add_event("hello", {"n": 1, "path": "caf\udce9"})
    q.register_worker("o1", "gpu0 caf\udce9", "cuda:0", 123)
    q.add_event("bye", {"n": 2})
    ev = q.events_after(0)
    assert [k for _, _, k, _ in ev] == ["hello", "worker_started", "bye"]
    assert ev[0][3] == {"n": 1, "path": "caf\udce9"}
    ids = [i for i, _, _, _ in ev]
    assert ids == sorted(ids) and q.last_event_id() == ids[-1] and q.events_after(ids[1])[0][2] == "bye"
    q.add_progress("o1", 10, 12, 1, 0.5)
    q.add_progress("o1", 5, 0, 0, 0.25)
    (w,) = q.workers()
    assert (w["owner"], w["device"], w["pid"], w["images"], w["faces"], w["failed"]) == (
        "o1",
        "cuda:0",
        123,
        15,
        12,
        1,
    )
    assert w["busy_s"] == pytest.approx(0.75) and w["name"].startswith("gpu0 caf")
    assert abs(q.now() - w["last_seen"]) < 60
    q.reset()
    assert q.workers() == [] and q.get_meta("root") is None and q.counts()["pending"]["units"] == 0


def test_undecodable_and_newline_names_survive(backend: QueueRef) -> None:
    """A file name with a newline stays one item (the old queue joined paths with newlines and read
    ``a`` and ``b.jpg`` instead); a non-UTF-8 name comes back byte for byte."""
    names = ["/in/a\nb.jpg", "/in/caf\udce9.jpg", "/in/\u00e9t\u00e9 \U0001f600.png", "/in/c.jpg"]
    q = _listed(backend, names, unit_size=3)
    assert q.counts()["pending"] == {"units": 2, "images": 4}
    u1, u2 = q.claim("w", 30, 3), q.claim("w", 30, 3)
    assert u1 and u2 and u1.paths + u2.paths == names
    assert u1.items[0] == ImageItem("/in/a\nb.jpg")
    assert os.fsencode(u1.paths[1]) == b"/in/caf\xe9.jpg"
    q.release(u1.id, "w", "cannot read caf\udce9.jpg\0")  # error text with the raw name
    assert "caf" in (q.last_error(u1.id) or "")
    bad = q.poisoned(1)
    assert [b.paths for b in bad] == [names[:3]]


def test_concurrent_claims_never_share_a_unit(backend: QueueRef) -> None:
    _listed(backend, [f"p{i}" for i in range(400)], unit_size=2)
    got: dict[str, list[str]] = {}

    def worker(name: str) -> None:
        wq = backend.open()
        mine = got.setdefault(name, [])
        while (u := wq.claim(name, 60, 3)) is not None:
            mine.append(u.id)
            assert wq.complete(u.id, name, {})

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for v in got.values() for i in v]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert backend.open().counts()["done"]["units"] == 200


def test_worker_processes_never_share_a_unit(backend: QueueRef, tmp_path: Path) -> None:
    q = _listed(backend, [f"p{i}" for i in range(300)], unit_size=2)
    procs = start_workers(backend.url, tmp_path, 3, 0.01)
    q.set_meta("go", "1")
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    ids = completed_ids(tmp_path, 3)
    assert len(ids) == 150 and len(set(ids)) == 150
    assert all((tmp_path / f"w{i}.txt").read_text() for i in range(3))  # each took part
    assert q.counts()["done"] == {"units": 150, "images": 300}
    assert sum(k == "unit_done" for _, _, k, _ in q.events_after(0)) == 150


# -- backend-specific ----------------------------------------------------------------------------
def test_open_queue_urls(tmp_path: Path) -> None:
    a = open_queue(tmp_path / "q.sqlite")
    a.set_meta("k", "v")
    b = open_queue(a.url)  # sqlite:///abs/path: the same file
    assert a.url.startswith("sqlite:///") and b.get_meta("k") == "v"
    a.close()
    b.close()
    with pytest.raises(QueueError, match="unknown queue URL scheme"):
        open_queue("redis://127.0.0.1/0")
    with pytest.raises(QueueError, match="name the run's schema"):
        open_queue(PG_SERVER)
    with pytest.raises(QueueError, match="name the run's schema"):
        open_queue(PG_SERVER + "?schema=Bad-Name")


def test_sqlite_queue_of_an_older_version_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "_queue.sqlite"
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE units (seq INTEGER PRIMARY KEY, id TEXT, paths TEXT, n INTEGER)")
    with pytest.raises(QueueError, match="older facefleet"):
        open_queue(old)


def test_sqlite_errors_are_queue_errors(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="cannot open the work queue"):
        open_queue(tmp_path / "missing_dir" / "_queue.sqlite")


def test_listing_memory_stays_flat(tmp_path: Path) -> None:
    """200,000 listed paths go through iter_inputs + the queue with a bounded Python heap."""
    from facefleet.io.discover import iter_inputs

    n = 200_000
    lst = tmp_path / "list.txt"
    with lst.open("w") as f:
        for i in range(n):
            f.write(f"/nonexistent/some/long/dataset/folder/{i // 1000:04d}/image_{i:07d}.jpg\n")
    q = open_queue(tmp_path / "_queue.sqlite")
    gc.collect()
    tracemalloc.start()
    try:
        images, units = enqueue_listing(q, iter_inputs(str(lst)), 256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (images, units) == (n, -(-n // 256))
    # holding the listing would take > 20 MB of str objects; streaming holds ~16 units
    assert peak < 6 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB"
    assert q.counts()["pending"]["images"] == n


# -- the manifest writer -------------------------------------------------------------------------
def _face(k: float) -> Face:
    lm = np.arange(468 * 3, dtype=np.float32).reshape(468, 3) + k
    return Face(
        bbox=np.array([1, 2, 3, 4], np.float32) + k,
        score=0.9,
        keypoints=np.zeros((6, 2), np.float32) + k,
        landmarks=lm,
        landmarks68=lm[:68, :2],
        pose=Pose(10.0, 20.0, 30.0, np.eye(4) * 2),
        presence=0.8,
    )


def test_manifest_rows_and_dataset(tmp_path: Path) -> None:
    results = [
        ImageResult("a.jpg", 64, 48, faces=[_face(0), _face(1)]),
        ImageResult("b.jpg", 32, 32),
        ImageResult("c.jpg", 0, 0, error="truncated file"),
    ]
    t = results_table(results, "u1")
    assert t.schema == SCHEMA
    rows = t.to_pylist()
    assert [(r["source"], r["face_index"]) for r in rows] == [
        ("a.jpg", 0),
        ("a.jpg", 1),
        ("b.jpg", -1),
        ("c.jpg", -1),
    ]
    assert (
        rows[1]["bbox"] == [2, 3, 4, 5] and len(rows[1]["landmarks"]) == 1404 and rows[1]["landmarks"][0] == 1
    )
    assert rows[0]["pose_matrix"][0] == 2 and len(rows[0]["landmarks68"]) == 136
    assert rows[2]["bbox"] is None and rows[2]["score"] is None and rows[2]["error"] is None
    assert rows[3]["error"] == "truncated file" and rows[3]["landmarks"] is None
    write_unit(tmp_path, "u1", results)
    write_unit(tmp_path, "u2", [ImageResult("d.jpg", 8, 8)])
    write_unit(tmp_path, "u2", [ImageResult("d.jpg", 8, 8)])  # rewrite replaces, never appends
    table = ds.dataset(tmp_path / "manifest", format="parquet").to_table()
    assert table.num_rows == 5
    back = read_manifest(tmp_path)
    assert back.num_rows == 5 and back.to_pylist()[2:4] == rows[2:4]  # null lists read back as null
    # no fixed-size lists: Arrow's Parquet reader could not read null ones until mid-2026 (arrow#35692),
    # and the no-face rows are null
    assert not any(pa.types.is_fixed_size_list(f.type) for f in SCHEMA)
    assert not [p for p in os.listdir(tmp_path / "manifest") if not p.endswith(".parquet")]


def test_output_location_mirrors_tree() -> None:
    """(export/sink.py's naming, documented there; kept here from the old engine tests)"""
    root = "/data/in"
    assert output_location("/data/in/x/y/a.jpg", root) == ("x/y", "a.jpg")
    assert output_location("/data/in/a.jpg", root) == ("", "a.jpg")
    rel, stem = output_location("s3://bucket/p q/a.jpg", None)
    assert rel.startswith("s3_~") and rel.split("/")[1] == "bucket" and rel.split("/")[2].startswith("p_q~")
    assert stem == "a.jpg"
    rel, stem = output_location("/elsewhere/../b.png", root)
    assert ".." not in rel and stem == "b.png"
