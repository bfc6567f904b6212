"""The worker's stages end to end in this process (a SQLite queue, a stand-in reconstructor):
what it reads (regular files only, a size cap), a drain that must not fail the worker, and the
one result sink's file names (the same for ``reconstruct`` and ``run``, collision-free)."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from facefleet.config import RunConfig
from facefleet.engine.manifest import read_manifest
from facefleet.engine.queue import open_queue
from facefleet.engine.worker import Worker, WorkerSpec, error_kind
from facefleet.engine.worker.spec import EXIT_OK
from facefleet.export.sink import ResultSink, output_location
from facefleet.io.read import read_file
from facefleet.platforms import DeviceProfile
from facefleet.sources.items import ImageItem
from facefleet.types import ImageResult


def _jpeg(path: Path, arr: np.ndarray) -> Path:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


class _Rec:
    """Stand-in networks: one result per image (its size), ``delay`` seconds per call."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def reconstruct_tensors(self, images: list[Any], sources: list[str], **_: Any) -> list[ImageResult]:
        time.sleep(self.delay)
        return [
            ImageResult(s, int(t.shape[2]), int(t.shape[1])) for t, s in zip(images, sources, strict=True)
        ]


def _spec(out: Path, **kw: Any) -> WorkerSpec:
    """A CPU worker's spec; ``kw``: ``batch``, ``readers``, ``input_root`` and ``[run]`` settings."""
    prof = DeviceProfile("cpu", "cpu", kw.pop("batch", 4), "fp32", "cpu", 1)
    readers, root = kw.pop("readers", 2), kw.pop("input_root", None)
    return WorkerSpec(
        "t0", str(out), prof, run=RunConfig(**kw), input_root=root, readers=readers, poll_seconds=0.05
    )


def _queue(out: Path, units: list[list[str]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open_queue(out / "_queue.sqlite") as q:
        q.add_units([(f"u{k}", tuple(ImageItem(s) for s in items)) for k, items in enumerate(units)])
        q.set_meta("listing_done", "1")


def _run_worker(spec: WorkerSpec, rec: Any) -> int:
    w = Worker(spec, reconstructor=rec)
    return w.run()


def test_only_regular_files_are_read_and_a_fifo_fails_fast(tmp_path: Path) -> None:
    """A named pipe would block its reader forever (and its unit: the heartbeat keeps the lease):
    it is refused at once with a clear error row, and the unit's other images are done."""
    good = _jpeg(tmp_path / "in" / "a.jpg", np.full((40, 50, 3), 120, np.uint8))
    fifo = tmp_path / "in" / "pipe.jpg"
    os.mkfifo(fifo)
    data, secs = read_file(str(fifo))
    assert isinstance(data, OSError) and "not a regular file: a named pipe" in str(data) and secs < 1
    data, _ = read_file(str(tmp_path / "in"))
    assert isinstance(data, OSError) and "a directory" in str(data)

    out = tmp_path / "out"
    _queue(out, [[str(good), str(fifo)]])
    t0 = time.monotonic()
    assert _run_worker(_spec(out), _Rec()) == EXIT_OK
    assert time.monotonic() - t0 < 30
    rows = {r["source"]: r for r in read_manifest(out).to_pylist()}
    assert rows[str(good)]["error"] is None and rows[str(good)]["width"] == 50
    err = rows[str(fifo)]["error"]
    assert "not a regular file: a named pipe" in err and error_kind(err) == "not_a_file"


def test_files_over_the_size_cap_are_refused_unread(tmp_path: Path) -> None:
    """A 2 GB junk .jpg (sparse here: no disk used) is refused from its size, without reading it;
    the cap is the worker's setting ([run] max_file_bytes)."""
    import resource

    big = tmp_path / "big.jpg"
    with open(big, "wb") as fh:
        fh.truncate(2 << 30)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data, secs = read_file(str(big))  # default cap: 256 MiB
    assert isinstance(data, OSError) and "too large" in str(data) and secs < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 64 << 10  # KiB: not read whole

    small = _jpeg(tmp_path / "in" / "ok.jpg", np.full((30, 30, 3), 90, np.uint8))
    junk = tmp_path / "in" / "junk.jpg"
    junk.write_bytes(os.urandom(20_000))
    out = tmp_path / "out"
    _queue(out, [[str(small), str(junk)]])
    assert _run_worker(_spec(out, max_file_bytes=10_000), _Rec()) == EXIT_OK
    rows = {r["source"]: r for r in read_manifest(out).to_pylist()}
    assert rows[str(small)]["error"] is None
    assert (
        error_kind(rows[str(junk)]["error"]) == "too_large" and "max_file_bytes" in rows[str(junk)]["error"]
    )


def test_a_drain_finishes_queued_reads_instead_of_failing_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C drains the run: the claimer stops claiming while reads it queued are still pending.
    Those reads used to be cancelled with the reader pool, and the batch holding one raised
    CancelledError: the worker died and its unit spent an attempt. Now the unit is finished."""
    import facefleet.engine.worker.claim as claim

    def slow_read(path: str, max_bytes: int) -> tuple[Any, float]:
        time.sleep(0.05)
        return read_file(path, max_bytes)

    monkeypatch.setattr(claim, "read_file", slow_read)
    srcs = [str(_jpeg(tmp_path / "in" / f"{k}.jpg", np.full((20, 20, 3), k, np.uint8))) for k in range(24)]
    out = tmp_path / "out"
    _queue(out, [srcs[:12], srcs[12:]])
    q = open_queue(out / "_queue.sqlite")

    def drain_once_claimed() -> None:
        while q.counts()["leased"]["units"] == 0:
            time.sleep(0.005)
        q.set_meta("drain", "1")

    t = threading.Thread(target=drain_once_claimed)
    t.start()
    code = _run_worker(_spec(out, readers=1), _Rec())
    t.join()
    assert code == EXIT_OK
    c = q.counts()
    q.close()
    # the units it held finished (one, or both when it had prefetched the second before the drain was
    # seen), none failed or lost
    done = c["done"]["units"]
    assert done >= 1 and done + c["pending"]["units"] == 2 and c["failed"]["units"] == 0
    rows = read_manifest(out).to_pylist()
    assert len(rows) == 12 * done and all(r["error"] is None for r in rows)


# -- the result sink --------------------------------------------------------------------------
def test_sink_names_are_collision_free_and_deterministic() -> None:
    root = "/data/in"
    names = [
        "with space.jpg",
        "with_space.jpg",
        "caf€.png",
        "caf_.png",
        "caf\udce9.png",
        "a\nb.jpg",
        "a_b.jpg",
    ]
    locs = [output_location(f"{root}/{n}", root) for n in names]
    assert len(set(locs)) == len(names)  # no two sources share a file
    assert locs[1] == ("", "with_space.jpg") and locs[3] == ("", "caf_.png")  # safe names kept
    assert locs[0][1].startswith("with_space~") and locs[0][1].endswith(".jpg")
    assert [output_location(f"{root}/{n}", root) for n in names] == locs  # same every time
    assert output_location("/data/in/x/y/a.jpg", root) == ("x/y", "a.jpg")
    assert output_location("/elsewhere/../b.png", root)[1] == "b.png"
    rel, name = output_location("s3://bucket/p q/a.jpg", None)
    assert name == "a.jpg" and rel.split("/")[1] == "bucket" and "~" in rel.split("/")[2]
    assert output_location("/s3/bucket/a.jpg", None) != output_location("s3://bucket/a.jpg", None)
    long = "x" * 300 + ".jpg"
    assert len(output_location(f"{root}/{long}", root)[1]) < 200


def _reconstruct_json(inp: Path, out: Path) -> None:
    """``facefleet reconstruct INP -o OUT --formats json`` (over the ``sizes_only_reconstruct`` stand-in
    of the calling test)."""
    import argparse

    from facefleet import reconstruct_cmd

    ns = argparse.Namespace(paths=[str(inp)], out=out, formats={"json"}, batch_size=4, max_file_bytes=1 << 20)
    assert reconstruct_cmd.reconstruct_paths(ns) == 0


def test_reconstruct_and_run_write_the_same_file_names(tmp_path: Path, sizes_only_reconstruct: None) -> None:
    """``facefleet reconstruct IN -o A`` and ``facefleet run IN B`` name every file alike (A/... ==
    B/files/...), the whole file name kept, and colliding names stay apart."""

    from facefleet.engine import run

    inp = tmp_path / "in"
    names = ["with space.jpg", "with_space.jpg", "caf€.png", "caf_.png", "sub/x.jpg", "sub/x.png"]
    for k, n in enumerate(names):
        arr = np.full((24, 32, 3), 40 + 30 * k, np.uint8)
        path = inp / n
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)

    a = tmp_path / "a"
    _reconstruct_json(inp, a)
    b = tmp_path / "b"
    run(
        str(inp),
        str(b),
        devices="cpu",
        formats=["json"],
        reconstructor="test_engine_support:FakeReconstructor",
    )

    def tree(d: Path) -> set[str]:
        return {str(p.relative_to(d)) for p in d.rglob("*.json")}

    got = tree(a)
    assert got == tree(b / "files")
    assert (
        len(got) == len(names)
        and {"with_space.jpg.json", "caf_.png.json", "sub/x.jpg.json", "sub/x.png.json"} <= got
    )


def test_a_name_that_is_not_utf8_is_recorded_not_fatal(tmp_path: Path, sizes_only_reconstruct: None) -> None:
    """``caf\\xe9.jpg`` (Latin-1 bytes): the manifest, the JSON file and ``reconstruct``'s output
    carry the name as text (``caf\\xe9.jpg``); both runners name its files alike (from its bytes)."""
    import json


    inp = tmp_path / "in"
    raw = os.fsdecode(bytes(inp) + b"/caf\xe9.jpg")
    _jpeg(Path(raw), np.full((30, 40, 3), 90, np.uint8))
    out = tmp_path / "out"
    _queue(out, [[raw]])
    assert _run_worker(_spec(out, formats=("json",), input_root=str(inp)), _Rec()) == EXIT_OK
    rows = read_manifest(out).to_pylist()
    text = str(inp) + "/caf\\xe9.jpg"
    assert [(r["source"], r["error"], r["width"]) for r in rows] == [(text, None, 40)]
    (name,) = [p.name for p in (out / "files").iterdir()]
    assert json.loads((out / "files" / name).read_text())["source"] == text

    a = tmp_path / "a"
    _reconstruct_json(inp, a)
    assert [p.name for p in a.iterdir()] == [name]


def test_demo_summary_lists_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The per-image line names every file written (JSON, OBJ, GLB, texture, overlay), no '...'."""
    from facefleet import reconstruct_cmd
    from facefleet.geometry import load_geometry
    from facefleet.types import Face, Pose

    geo = load_geometry()
    lm = np.asarray(geo.canonical, np.float32) * 4 + 100
    face = Face(
        bbox=np.array([50, 50, 150, 150], np.float32), score=0.9, keypoints=np.zeros((6, 2), np.float32),
        landmarks=lm, landmarks68=lm[:68, :2], pose=Pose(1.0, 2.0, 3.0, np.eye(4)),
        texture=np.zeros((16, 16, 4), np.uint8),
    )  # fmt: skip

    def rec(arrays: list[np.ndarray], sources: list[str], texture: bool = False) -> list[ImageResult]:
        return [
            ImageResult(s, a.shape[1], a.shape[0], faces=[face]) for a, s in zip(arrays, sources, strict=True)
        ]

    image = np.zeros((200, 200, 3), np.uint8)
    formats = {"json", "obj", "glb", "png", "overlay"}
    n_faces, n_failed = reconstruct_cmd._process(rec, [("astronaut", image, None)], tmp_path, formats)
    assert (n_faces, n_failed) == (1, 0)
    line = capsys.readouterr().out
    assert "..." not in line
    for name in (
        "astronaut.json",
        "astronaut.glb",
        "astronaut_face0.obj",
        "astronaut_overlay.png",
        "texture.png",
    ):
        assert name in line, name
    sink = ResultSink.of(tmp_path, formats, None)
    assert sink.location("astronaut") == (tmp_path, "astronaut")
