"""Sink stage: per-image files and the unit's manifest, then the unit is done.

The writer thread hands each image's files to a pool (processes on GPU workers that write meshes,
textures or overlays: PNG and OBJ encoding hold the GIL; threads otherwise) as results arrive, named
by the one :class:`~facefleet.export.sink.ResultSink` every runner shares. Textures reach writer
processes through a ring of shared-memory slots (:mod:`.texture_ring`) rather than pickled. A unit's
end goes to the finisher thread, which waits for the unit's files, flushes them with one
``syncfs``, writes ``OUT/manifest/unit-<id>.parquet`` and completes the unit in the queue, so that
dispatching the next batches' files never waits for a unit's flush.
"""

from __future__ import annotations

import contextlib
import queue as queue_mod
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from facefleet.engine.layout import FILES_DIR
from facefleet.engine.queue import WorkQueue, open_queue
from facefleet.engine.worker.base import (
    STOP,
    Abort,
    End,
    UnitState,
    WorkerBase,
    add_time,
    check_shared_memory,
    fail_image,
)
from facefleet.engine.worker.errors import DISK_ERRNOS, OutputError, error_kind
from facefleet.engine.worker.spec import PROCESS_FORMATS, WorkerSpec
from facefleet.export.sink import ResultSink, with_text_source
from facefleet.types import ImageResult


class SinkStage(WorkerBase):
    """The writer and finisher threads, their file pool and the texture ring."""

    def _texture_ring(self) -> Any:
        """Shared-memory slots for the textures of batches on their way to the writer processes
        (:mod:`facefleet.engine.worker.texture_ring`): when textures are written by processes and the
        reconstructor can copy them into a given buffer; failing that, pickled as before (warning)."""
        import inspect

        fn = getattr(self._rec, "reconstruct_tensors", None)
        if not self.texture or not self._file_processes() or fn is None:
            return None
        if "texture_out" not in inspect.signature(fn).parameters:
            return None
        from facefleet.engine.worker.texture_ring import TextureRing

        slots, size = 3, int(self.spec.run.texture_size)
        cap = self.batch_size * size * size * 4  # one RGBA texture per image; more faces go pickled
        try:
            check_shared_memory(slots * cap, "the texture slots")
            return TextureRing(slots, cap)
        except Exception as e:
            print(
                f"facefleet worker {self.spec.name}: textures go to the writer processes pickled "
                f"({type(e).__name__}: {e})",
                file=sys.stderr,
            )
            return None

    def result_sink(self) -> ResultSink:
        """Where this run's per-image files go and how they are named (``OUT/files``)."""
        spec = self.spec
        return ResultSink.of(Path(spec.out_dir) / FILES_DIR, self.formats, spec.input_root)

    def _file_processes(self) -> bool:
        procs = self.spec.run.file_processes
        if procs is None:
            procs = self.device.type == "cuda" and bool(self.formats & PROCESS_FORMATS)
        return bool(procs)

    def _file_pool(self) -> Any:
        """Executor for per-image files. Meshes and textures (PNG encoding, OBJ text) are CPU work
        that holds the GIL, so a GPU worker writes them in spawned processes (as many as ``writers``);
        JSON-only output and CPU workers (whose cores are taken by the networks) use threads."""
        if self._file_processes():
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # Ctrl-C reaches every process of the terminal's group: a writer would die of it mid-file
            return ProcessPoolExecutor(
                max(1, self.spec.writers), mp_context=mp.get_context("spawn"), initializer=ignore_sigint
            )
        return ThreadPoolExecutor(max(1, self.spec.writers), thread_name_prefix="writer")

    def _writer(self) -> None:
        """Hands each image's files to the pool as results arrive; finished units go to a finisher
        thread, which waits for their files, flushes them and writes the unit's Parquet, so that
        dispatching the next batches' files never waits for a unit's flush."""
        from concurrent.futures.process import BrokenProcessPool

        pool = self._file_pool()
        sink = self.result_sink()
        done_q: queue_mod.Queue[Any] = queue_mod.Queue(maxsize=4)
        finisher = threading.Thread(
            target=self._guard(lambda: self._finisher(done_q)), name="finisher", daemon=True
        )
        finisher.start()
        try:
            while True:
                item = self._get(self._write_q)
                if item is STOP:
                    self._put(done_q, STOP)
                    finisher.join()
                    return
                if isinstance(item, End):
                    self._put(done_q, item.state)
                    continue
                batch, results = item
                st = batch.state
                in_ring: list[Future[Any]] = []  # the files that read the batch's texture slot
                for k, (i, r) in enumerate(zip(batch.index, results, strict=False)):
                    raw = r.source  # names the files; results carry it as text (the manifest's form)
                    r = with_text_source(r)
                    st.results[i] = r
                    sent = r if batch.ring is None else with_texture_refs(r, self._ring)
                    if self.formats:  # failed images get their JSON (with the error) too
                        image = None
                        if self.keep_images and r.error is None:
                            if batch.host_ready is not None:  # the copies from the device are done
                                batch.host_ready.synchronize()
                                batch.host_ready = None
                            image = batch.items[k].permute(1, 2, 0).numpy()  # (H, W, 3) uint8
                        args = (sent, image, sink, raw)
                        try:
                            fut = pool.submit(write_files, *args)
                        except BrokenProcessPool:  # a writer process died (OOM killer...): new pool
                            pool.shutdown(wait=False)
                            pool = self._file_pool()
                            fut = pool.submit(write_files, *args)
                        st.files.append((i, fut))
                        if sent is not r:
                            in_ring.append(fut)
                    if sent is not r:  # the slot is the writers' now; the results keep no view of it
                        for face, moved in zip(r.faces, sent.faces, strict=True):
                            if moved is not face:  # (the others go pickled, with their own arrays)
                                face.texture = None
                if batch.ring is not None:
                    self._release_ring_after(batch.ring, in_ring)
        except Abort:
            pass
        finally:
            if finisher.is_alive():
                finisher.join(timeout=60)
            pool.shutdown(wait=True)

    def _release_ring_after(self, slot: int, futures: list[Future[Any]]) -> None:
        """Texture slot ``slot`` is free once all ``futures`` (the files reading it) are done."""
        if not futures:
            self._ring.release(slot)
            return
        left = [len(futures)]
        lock = threading.Lock()

        def done(_: Future[Any]) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._ring.release(slot)

        for fut in futures:
            fut.add_done_callback(done)

    def _finisher(self, done_q: queue_mod.Queue[Any]) -> None:
        """Finishes units in the order they end (see :meth:`_finish_unit`)."""
        db = open_queue(self.spec.queue_path)
        try:
            while True:
                st = self._get(done_q)
                if st is STOP:
                    return
                self._finish_unit(st, db)
        except Abort:
            pass
        finally:
            db.close()

    @contextlib.contextmanager
    def _disk_errors(self) -> Any:
        """OUT that cannot take more (disk full, read-only, permission) becomes :class:`OutputError`."""
        try:
            yield
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                raise OutputError(e.errno, f"cannot write to {self.spec.out_dir}: {e.strerror}") from e
            raise

    def _finish_unit(self, st: UnitState, db: WorkQueue) -> None:
        """Waits for a unit's files (an error writing one fails that image; a full or read-only OUT
        ends the worker), makes them durable, writes the unit's Parquet and marks the unit done."""
        from facefleet.engine.manifest import write_unit

        for i, fut in st.files:
            try:
                with self._disk_errors():
                    add_time(st.stages, "write", fut.result())
            except OutputError:
                raise
            except OSError as e:
                fail_image(st, i, f"cannot write output files: {e}")
            except Exception as e:
                fail_image(st, i, f"cannot write output files: {type(e).__name__}: {e}")
        if st.files:  # per-image files were written without fsyncs: flush them in one call
            from facefleet.io.atomic import sync_filesystem

            t0 = time.perf_counter()
            with self._disk_errors():
                sync_filesystem(Path(self.spec.out_dir))
            add_time(st.stages, "write", time.perf_counter() - t0)
        results = [r for r in st.results if r is not None]
        if len(results) != len(st.unit.paths):  # cannot happen unless a stage lost items
            raise RuntimeError(f"unit {st.unit.id}: {len(results)} results for {len(st.unit.paths)} inputs")
        t0 = time.perf_counter()
        with self._disk_errors():
            write_unit(self.spec.out_dir, st.unit.id, results)
        add_time(st.stages, "write", time.perf_counter() - t0)
        complete_unit(db, self.spec.out_dir, st.unit.id, self.owner, unit_stats(st, results, self.spec))
        with self._held_lock:
            self._held.discard(st.unit.id)


def complete_unit(db: WorkQueue, out_dir: str, uid: str, owner: str, stats: dict[str, Any]) -> bool:
    """Marks a unit whose manifest file is written done; returns whether this call did. A unit
    whose lease ran out and that was cut in halves meanwhile (a poison unit) loses its file: the
    halves' files hold its rows, and a second copy would double them."""
    if db.complete(uid, owner, stats):
        return True
    if db.state_of(uid) == "split":
        from facefleet.engine.manifest import unit_path

        unit_path(out_dir, uid).unlink(missing_ok=True)
    return False


def with_texture_refs(result: ImageResult, ring: Any) -> ImageResult:
    """``result`` with each face texture that lies in a slot of ``ring`` replaced by its
    :class:`~facefleet.engine.worker.texture_ring.TextureRef` (the writer process maps it), or
    ``result`` itself when none does."""
    import dataclasses

    refs = [None if f.texture is None else ring.ref(f.texture) for f in result.faces]
    if not any(refs):
        return result
    faces = [
        f if ref is None else dataclasses.replace(f, texture=ref)
        for f, ref in zip(result.faces, refs, strict=True)
    ]
    return dataclasses.replace(result, faces=faces)


def ignore_sigint() -> None:
    """Initialiser of writer processes: interrupts are the worker's to handle (it drains)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def write_files(result: ImageResult, image: Any, sink: ResultSink, source: str | None = None) -> float:
    """Write one image's per-image files through ``sink`` (named by ``source``, the source as listed,
    when the result holds its text form) without their fsyncs (the finisher makes a
    unit's files durable at once, before the unit is recorded); return the seconds it took. Module
    level, so that a process pool can run it; textures in a slot of the worker's texture ring are
    mapped here."""
    from facefleet.engine.worker.texture_ring import TextureRef, resolve
    from facefleet.io.atomic import deferred_fsync

    t0 = time.perf_counter()
    for face in result.faces:
        if isinstance(face.texture, TextureRef):
            face.texture = resolve(face.texture)
    with deferred_fsync():
        sink.write(result, image, source=source)
    return time.perf_counter() - t0


def unit_stats(st: UnitState, results: list[ImageResult], spec: WorkerSpec) -> dict[str, Any]:
    """Counts and timings of a finished unit (stored with the unit, sent as the unit_done event)."""
    by_reason: dict[str, int] = {}
    failures: list[dict[str, str]] = []
    for r in results:
        if r.error is not None:
            kind = error_kind(r.error)
            by_reason[kind] = by_reason.get(kind, 0) + 1
            if sum(f["reason"] == kind for f in failures) < 3:
                failures.append({"source": r.source, "reason": kind, "error": r.error})
    stages = {k: round(v, 6) for k, v in st.stages.items() if not k.startswith("_")}
    out: dict[str, Any] = {
        "worker": spec.name,
        "device": spec.profile.device,
        "images": len(results),
        "faces": sum(len(r.faces) for r in results),
        "no_face": sum(1 for r in results if r.error is None and not r.faces),
        "failed": sum(1 for r in results if r.error is not None),
        "failed_by_reason": by_reason,
        "failures": failures,
        "stages": stages,
        "seconds": round(time.time() - st.t0, 6),
        "busy_seconds": round(st.busy, 6),
        "batch_seconds": [round(b, 6) for b in st.batch_seconds],
        "batch_done": [[round(t, 4), n] for t, n in st.batch_done],
        "batch_stages": [[round(row[0], 4), *(round(v, 5) for v in row[1:])] for row in st.batch_stages],
        "batch_size": spec.profile.batch_size,
    }
    if "_peak_mib" in st.stages:
        out["gpu_memory_peak_mib"] = round(st.stages["_peak_mib"], 1)
    return out
