"""Inside one worker: CUDA out-of-memory halving and per-image error isolation (in process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from facefleet.config import RunConfig
from facefleet.engine.worker import Worker, WorkerSpec, error_kind
from facefleet.platforms import DeviceProfile
from facefleet.types import ImageResult


class _Flaky:
    """Runs out of memory above ``limit`` images per call; raises on images named 'bad'."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls: list[int] = []

    def reconstruct_tensors(self, images: list[Any], sources: list[str], **_: Any) -> list[ImageResult]:
        self.calls.append(len(images))
        if len(images) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any("bad" in s for s in sources):
            raise RuntimeError("shape mismatch in the mesh stage")
        return [ImageResult(s, t.shape[2], t.shape[1]) for t, s in zip(images, sources, strict=True)]


def _worker(tmp_path: Path, rec: Any, batch: int = 8) -> Worker:
    spec = WorkerSpec("t0", str(tmp_path), DeviceProfile("cpu", "cpu", batch, "fp32", "cpu", 1))
    w = Worker(spec, reconstructor=rec)
    w.device = torch.device("cpu")
    return w


def test_oom_halves_the_batch_and_keeps_order(tmp_path: Path) -> None:
    rec = _Flaky(limit=2)
    w = _worker(tmp_path, rec)
    imgs = [torch.zeros(3, 4 + i, 5, dtype=torch.uint8) for i in range(8)]
    out = w._infer(imgs, [f"s{i}" for i in range(8)], {})
    assert [r.source for r in out] == [f"s{i}" for i in range(8)]
    assert [r.height for r in out] == [4 + i for i in range(8)] and all(r.ok for r in out)
    assert rec.calls[:3] == [8, 4, 2] and w.batch_size == 2  # later batches start smaller


def test_single_image_oom_becomes_an_error_row(tmp_path: Path) -> None:
    w = _worker(tmp_path, _Flaky(limit=0))
    out = w._infer([torch.zeros(3, 7, 9, dtype=torch.uint8)], ["big.jpg"], {})
    assert out[0].error is not None and "out of device memory" in out[0].error and out[0].width == 9
    assert error_kind(out[0].error) == "out_of_memory"


def test_one_failing_image_does_not_fail_its_batch(tmp_path: Path) -> None:
    w = _worker(tmp_path, _Flaky(limit=100))
    srcs = ["a", "b", "bad", "c", "d"]
    out = w._infer([torch.zeros(3, 4, 4, dtype=torch.uint8)] * 5, srcs, {})
    assert [r.source for r in out] == srcs
    assert [r.ok for r in out] == [True, True, False, True, True]
    assert "reconstruction failed: RuntimeError: shape mismatch" in (out[2].error or "")


def test_broken_device_errors_propagate(tmp_path: Path) -> None:
    class Broken:
        def reconstruct_tensors(self, *a: Any, **k: Any) -> list[ImageResult]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    w = _worker(tmp_path, Broken())
    with pytest.raises(RuntimeError, match="illegal memory access"):
        w._infer([torch.zeros(3, 4, 4, dtype=torch.uint8)] * 2, ["a", "b"], {})


def test_environment_errors_are_not_blamed_on_images(tmp_path: Path) -> None:
    class NoModule:
        def reconstruct_tensors(self, *a: Any, **k: Any) -> list[ImageResult]:
            raise ModuleNotFoundError("No module named 'tflite'")

    w = _worker(tmp_path, NoModule())
    with pytest.raises(ImportError):
        w._infer([torch.zeros(3, 4, 4, dtype=torch.uint8)] * 2, ["a", "b"], {})


def test_per_image_files_written_by_a_process_pool(tmp_path: Path) -> None:
    """GPU workers hand OBJ/PNG/JSON writing to spawned processes (PNG and OBJ encoding hold the GIL):
    the files land under OUT/files mirroring the input tree, and the job reports its seconds."""
    import json
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    from facefleet.engine.worker.sink import write_files
    from facefleet.geometry import load_geometry
    from facefleet.types import Face, Pose

    geo = load_geometry()
    lm = np.asarray(geo.canonical, np.float32) * 4 + 200
    tex = np.zeros((64, 64, 4), np.uint8)
    tex[..., 0], tex[..., 3] = 200, 255
    face = Face(
        bbox=np.array([100, 100, 300, 300], np.float32), score=0.9, keypoints=np.zeros((6, 2), np.float32),
        landmarks=lm, landmarks68=lm[:68, :2], pose=Pose(1.0, 2.0, 3.0, np.eye(4)), texture=tex,
    )  # fmt: skip
    result = ImageResult(str(tmp_path / "in" / "a" / "p.jpg"), 640, 480, faces=[face])
    spec = WorkerSpec(
        "t0", str(tmp_path / "out"), DeviceProfile("cpu", "cpu", 4, "fp32", "cpu", 1),
        run=RunConfig(formats=("obj", "png", "json"), file_processes=True), input_root=str(tmp_path / "in"),
    )  # fmt: skip
    w = Worker(spec, reconstructor=_Flaky(1))
    w.device = torch.device("cpu")
    pool = w._file_pool()
    try:
        assert isinstance(pool, ProcessPoolExecutor)
        secs = pool.submit(write_files, result, None, w.result_sink()).result()
    finally:
        pool.shutdown()
    assert secs > 0
    files = tmp_path / "out" / "files" / "a"
    assert {p.name for p in files.iterdir()} == {
        "p.jpg.json",
        "p.jpg_face0.obj",
        "p.jpg_face0.mtl",
        "p.jpg_face0_texture.png",
    }  # fmt: skip (one texture file: the OBJ's material uses the png output)
    obj = (files / "p.jpg_face0.obj").read_text().splitlines()
    assert (
        sum(line.startswith("v ") for line in obj) == 468 and sum(line.startswith("f ") for line in obj) > 800
    )
    assert json.loads((files / "p.jpg.json").read_text())["faces"][0]["score"] == 0.9
    from PIL import Image

    png = files / "p.jpg_face0_texture.png"
    assert "map_Kd p.jpg_face0_texture.png" in (files / "p.jpg_face0.mtl").read_text().splitlines()
    assert np.array_equal(np.asarray(Image.open(png)), tex)
    trimesh = pytest.importorskip("trimesh")
    mesh = trimesh.load(files / "p.jpg_face0.obj", process=False, maintain_order=True)
    assert len(mesh.vertices) == 468 and mesh.visual.material.image.size == (tex.shape[1], tex.shape[0])


def test_stack_sampler_reports_where_threads_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FACEFLEET_STACK_SAMPLES: per thread, the share of samples at each innermost stack, and the share
    in which each function was anywhere on the stack."""
    import threading
    import time

    from facefleet.engine.worker.stacks import StackSampler

    monkeypatch.delenv("FACEFLEET_STACK_SAMPLES", raising=False)
    assert StackSampler.from_env("w") is None  # off unless asked for
    monkeypatch.setenv("FACEFLEET_STACK_SAMPLES", str(tmp_path))
    monkeypatch.setenv("FACEFLEET_STACK_INTERVAL", "0.005")
    sampler = StackSampler.from_env("gpu0")
    assert sampler is not None
    stop = threading.Event()

    def sleeper() -> None:
        while not stop.is_set():
            time.sleep(0.001)

    def outer_stage() -> None:
        sleeper()

    t = threading.Thread(target=outer_stage, name="busy-sleeper")
    t.start()
    sampler.start()
    time.sleep(0.3)
    out = sampler.stop()
    stop.set()
    t.join()
    assert out == tmp_path / "stacks-gpu0.txt"
    text = out.read_text()
    assert "== busy-sleeper" in text and "sleeper" in text.split("== busy-sleeper")[1]
    inclusive = text.split("== busy-sleeper")[1].split("-- inclusive")[1].split("==")[0]
    share = {line.split("%")[1].strip(): float(line.split("%")[0]) for line in inclusive.strip().splitlines()}
    assert share["test_engine_worker.py outer_stage"] > 80  # on every sample taken while it ran


def test_unit_write_errors_disk_full_stops_other_errors_fail_the_image(tmp_path: Path) -> None:
    """A full or read-only OUT stops the worker with OutputError (restarting cannot help); any other
    error writing an image's files fails that image only and the unit is still recorded."""
    import errno
    import time
    from concurrent.futures import Future

    from facefleet.engine.queue import Unit
    from facefleet.engine.worker import OutputError
    from facefleet.engine.worker.base import UnitState

    def done(exc: BaseException | None) -> Future[Any]:
        f: Future[Any] = Future()
        f.set_exception(exc) if exc is not None else f.set_result(0.01)
        return f

    w = _worker(tmp_path, _Flaky(8))
    db = _Completes()
    unit = Unit("u1", 0, ["a.jpg", "b.jpg"], 1)
    st = UnitState(unit, time.time(), [ImageResult("a.jpg", 4, 4), ImageResult("b.jpg", 4, 4)], [])
    st.files = [(0, done(None)), (1, done(OSError(errno.EIO, "I/O error")))]
    w._finish_unit(st, db)  # type: ignore[arg-type]
    assert db.completed == ["u1"]
    assert st.results[0].error is None and "cannot write output files" in str(st.results[1].error)

    st.files = [(0, done(OSError(errno.ENOSPC, "No space left on device")))]
    with pytest.raises(OutputError, match="No space left on device"):
        w._finish_unit(st, db)  # type: ignore[arg-type]
    assert db.completed == ["u1"]  # not recorded a second time


class _Completes:
    def __init__(self) -> None:
        self.completed: list[str] = []

    def complete(self, uid: str, owner: str, stats: Any) -> bool:
        self.completed.append(uid)
        return True


def test_a_unit_split_while_its_worker_finished_it_leaves_no_second_manifest_file(tmp_path: Path) -> None:
    """A worker whose lease ran out finishes a unit the coordinator has meanwhile cut in halves (a
    poison unit): its manifest file goes, else the halves' files would double its rows."""
    from facefleet.engine.manifest import unit_path, write_unit
    from facefleet.engine.queue import iter_units, open_queue
    from facefleet.engine.worker.sink import complete_unit
    from facefleet.sources.items import ImageItem

    items = [ImageItem(f"/in/{k}.jpg") for k in range(4)]
    with open_queue(tmp_path / "q.sqlite") as q:
        q.add_units(iter_units(items, 2))
        slow, fine = q.claim("slow", 0.0, 1, now=100.0), q.claim("fine", 60.0, 1, now=100.0)
        assert slow is not None and fine is not None
        assert [u.id for u in q.poisoned(1, now=101.0)] == [slow.id]  # its lease ran out
        assert len(q.split(slow.id, now=101.0)) == 2
        for unit in (slow, fine):
            write_unit(tmp_path, unit.id, [ImageResult(p, 10, 10) for p in unit.paths])
        assert not complete_unit(q, str(tmp_path), slow.id, "slow", {})
        assert not unit_path(tmp_path, slow.id).exists()
        assert complete_unit(q, str(tmp_path), fine.id, "fine", {})
        assert unit_path(tmp_path, fine.id).exists() and q.state_of(fine.id) == "done"


def test_cpu_workers_build_the_pipeline_with_the_configured_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """[cpu] runtime reaches the pipeline of a CPU worker, with its share of the cores."""
    import dataclasses

    import facefleet.pipeline
    from facefleet.engine.worker.build import make_reconstructor

    seen: dict[str, Any] = {}
    monkeypatch.setattr(facefleet.pipeline, "Reconstructor", lambda **kw: seen.update(kw))
    profile = dataclasses.replace(DeviceProfile("cpu", "cpu", 8, "fp32", "cpu", 3), runtime="litert")
    make_reconstructor(WorkerSpec("c0", "/out", profile), "cpu")
    assert seen["runtime"] == "litert" and seen["threads"] == 3 and seen["device"] == "cpu"
