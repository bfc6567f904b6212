"""The durable queue, units of work and the manifest writer (no worker processes)."""

from __future__ import annotations

import gc
import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from facefleet.engine.manifest import SCHEMA, output_location, read_manifest, results_table, write_unit
from facefleet.engine.queue import WorkQueue, enqueue_listing, iter_units, unit_id
from facefleet.types import Face, ImageResult, Pose


def _queue(tmp_path: Path, paths: list[str], unit_size: int = 4) -> WorkQueue:
    q = WorkQueue(tmp_path / "_queue.sqlite")
    enqueue_listing(q, paths, unit_size)
    return q


def test_unit_ids_are_deterministic_and_local() -> None:
    paths = [f"/data/img{i:04d}.jpg" for i in range(10)]
    a = list(iter_units(paths, 4))
    b = list(iter_units(iter(paths), 4))
    assert a == b
    assert [len(u) for _, u in a] == [4, 4, 2]
    assert len({uid for uid, _ in a}) == 3
    changed = [*paths[:5], "/data/other.jpg", *paths[6:]]
    c = list(iter_units(changed, 4))
    assert c[0][0] == a[0][0] and c[2][0] == a[2][0] and c[1][0] != a[1][0]
    assert unit_id(["a", "bc"]) != unit_id(["ab", "c"])  # separator matters
    with pytest.raises(ValueError):
        list(iter_units(paths, 0))


def test_claim_complete_and_resume_idempotent(tmp_path: Path) -> None:
    paths = [f"p{i}" for i in range(10)]
    q = _queue(tmp_path, paths)
    assert q.get_meta("listing_done") == "1" and q.get_meta("listed_images") == "10"
    assert q.counts()["pending"] == {"units": 3, "images": 10}
    u = q.claim("w1", 30, 3)
    assert u is not None and u.paths == paths[:4] and u.attempts == 1
    assert q.complete(u.id, "w1", {"images": 4})
    assert not q.complete(u.id, "w2", {"images": 4})  # a second finisher does not count twice
    # listing the same input again inserts nothing new
    enqueue_listing(q, paths, 4)
    assert q.counts()["done"]["units"] == 1 and q.counts()["pending"]["units"] == 2
    kinds = [k for _, _, k, _ in q.events_after(0)]
    assert kinds.count("unit_started") == 1 and kinds.count("unit_done") == 1


def test_lease_expiry_requeues_to_another_worker(tmp_path: Path) -> None:
    q = _queue(tmp_path, [f"p{i}" for i in range(4)])  # one unit
    u = q.claim("dead", lease_seconds=5, max_attempts=3, now=1000.0)
    assert u is not None
    assert q.claim("alive", 5, 3, now=1004.0) is None  # lease still valid
    again = q.claim("alive", 5, 3, now=1006.0)  # expired: re-queued
    assert again is not None and again.id == u.id and again.attempts == 2
    assert q.heartbeat("dead", [u.id], 5) == 0  # the dead owner lost it
    assert q.heartbeat("alive", [u.id], 5) == 1


def test_poison_unit_after_max_attempts(tmp_path: Path) -> None:
    q = _queue(tmp_path, ["a", "b"])
    for k in range(2):
        u = q.claim(f"w{k}", 1, max_attempts=2, now=100.0 + 10 * k)
        assert u is not None
    assert q.claim("w3", 1, 2, now=200.0) is None  # used up
    bad = q.poisoned(2, now=200.0)
    assert [b.paths for b in bad] == [["a", "b"]]
    q.fail(bad[0].id, "boom", {"images": 2, "failed": 2})
    assert q.counts()["failed"]["units"] == 1 and q.remaining() == 0


def test_release_owner_returns_units(tmp_path: Path) -> None:
    q = _queue(tmp_path, [f"p{i}" for i in range(8)])
    a = q.claim("w1", 30, 3)
    b = q.claim("w1", 30, 3)
    assert a and b and a.id != b.id
    assert q.release_owner("w1", "worker died") == 2
    assert q.counts()["pending"]["units"] == 2
    assert q.last_error(a.id) == "worker died"
    # the unit on the device keeps its attempt, the prefetched one gets it back
    a2, b2 = q.claim("w2", 30, 3), q.claim("w2", 30, 3)
    assert a2 and b2 and (a2.id, a2.attempts, a2.retried) == (a.id, 2, True)
    assert (b2.id, b2.attempts, b2.retried) == (b.id, 1, False)


def test_concurrent_claims_never_share_a_unit(tmp_path: Path) -> None:
    q = _queue(tmp_path, [f"p{i}" for i in range(400)], unit_size=2)
    got: dict[str, list[str]] = {}

    def worker(name: str) -> None:
        wq = WorkQueue(tmp_path / "_queue.sqlite")
        mine = got.setdefault(name, [])
        while (u := wq.claim(name, 60, 3)) is not None:
            mine.append(u.id)
            wq.complete(u.id, name, {})
        wq.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for v in got.values() for i in v]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert q.counts()["done"]["units"] == 200


def test_listing_memory_stays_flat(tmp_path: Path) -> None:
    """200,000 listed paths go through iter_inputs + the queue with a bounded Python heap."""
    from facefleet.io.discover import iter_inputs

    n = 200_000
    lst = tmp_path / "list.txt"
    with lst.open("w") as f:
        for i in range(n):
            f.write(f"/nonexistent/some/long/dataset/folder/{i // 1000:04d}/image_{i:07d}.jpg\n")
    q = WorkQueue(tmp_path / "_queue.sqlite")
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
    root = "/data/in"
    assert output_location("/data/in/x/y/a.jpg", root) == ("x/y", "a.jpg")
    assert output_location("/data/in/a.jpg", root) == ("", "a.jpg")
    rel, stem = output_location("s3://bucket/p q/a.jpg", None)
    assert (rel, stem) == ("s3/bucket/p_q", "a.jpg")
    rel, stem = output_location("/elsewhere/../b.png", root)
    assert ".." not in rel and stem == "b.png"
