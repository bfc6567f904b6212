"""The worker of a video job: claims chunks (units of one :class:`FrameRange`) and runs them through a
:class:`~facefleet.video.chunks.ChunkRunner` on its device, up to ``[gpu]/[cpu] batch_size`` chunks at
once (frame ``t`` of each in one batch).

The queue's semantics are the photo worker's: a chunk is marked done only once its files are written; a
heartbeat thread extends the leases of the chunks held; a chunk that fails (a frame that cannot be
decoded, an encoder error) is given back with its error and counts an attempt, so after ``[run]
max_attempts`` the coordinator records it failed (and its video with it) while the other chunks go on.
A worker killed mid-chunk loses only the chunks it held: their leases run out and another worker (or
its restart) redoes them from their first frame.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from facefleet.engine.queue import WorkQueue, open_queue
from facefleet.engine.worker.claim import draining, keep_leases
from facefleet.engine.worker.spec import EXIT_OK, WorkerSpec, owner_id
from facefleet.sources.items import FrameRange


class VideoWorker:
    """One worker process's chunks of video, on ``local_device`` (``"cpu"`` or ``"cuda:0"``)."""

    def __init__(self, spec: WorkerSpec, *, local_device: str, started: float | None = None) -> None:
        self.spec = spec
        self.local_device = local_device
        self.pid = os.getpid()
        self.owner = owner_id(spec.name, self.pid)
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self._drain = threading.Event()
        self._started = time.perf_counter() if started is None else started

    def drain(self) -> None:
        """Claim no more chunks; finish those held (safe from a signal handler)."""
        self._drain.set()

    def run(self) -> int:
        from facefleet.engine.worker.build import make_reconstructor
        from facefleet.video.chunks import ChunkRunner

        spec = self.spec
        rec = make_reconstructor(spec, self.local_device)
        if rec.device.type == "cuda":
            self._warm_up(rec)
        runner = ChunkRunner(rec, spec.video, spec.out_dir, streams=spec.streams or spec.profile.batch_size)
        db = open_queue(spec.queue_path)
        db.register_worker(self.owner, spec.name, spec.profile.device, self.pid)
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        print(
            f"facefleet worker {spec.name}: ready in {time.perf_counter() - self._started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        # FACEFLEET_STACK_SAMPLES / FACEFLEET_TORCH_PROFILE (README): from now on, as the photo worker
        from facefleet.engine.worker.stacks import BatchWindowProfiler, StackSampler

        sampler = StackSampler.from_env(spec.name)
        window = BatchWindowProfiler.from_env(spec.name) if rec.device.type == "cuda" else None
        if sampler is not None:
            sampler.start()
        try:
            while not self._draining(db):
                runner.run(
                    lambda: self._claim(db),
                    lambda uid, item, stats: self._done(db, uid, stats),
                    lambda uid, item, e: self._failed(db, uid, item, e),
                    stop=lambda: self._draining(db),
                    on_step=None if window is None else window.batch_starts,
                )
                if db.get_meta("listing_done") == "1" and db.remaining() == 0:
                    break
                time.sleep(spec.poll_seconds)  # units leased by others may come back
        finally:
            self._stop.set()
            beat.join(timeout=5)
            db.close()
            if window is not None:
                window.finish()
            if sampler is not None:
                sampler.stop()
        return EXIT_OK

    def _warm_up(self, rec: Any) -> None:
        """cuDNN plans, compiled code and CUDA graphs of every batch size now, before the first chunk, as
        the photo worker does (otherwise each new batch size pays them mid-video); a cold compile cache is
        saved for the next start."""
        from facefleet.engine.worker.startup import compile_folder, finish_compile, start_compile

        folder = compile_folder(self.spec)
        start_compile(folder)
        rec.warmup()
        finish_compile(folder, any(getattr(n, "compiled", False) for n in rec.networks()))

    def _draining(self, db: WorkQueue) -> bool:
        return draining(db, self._drain, self.spec.coordinator_pid)

    def _claim(self, db: WorkQueue) -> tuple[str, FrameRange] | None:
        run = self.spec.run
        unit = db.claim(self.owner, run.lease_seconds, run.max_attempts)
        if unit is None:
            return None
        if len(unit.items) != 1 or not isinstance(unit.items[0], FrameRange):
            db.release(unit.id, self.owner, "a video worker runs units of one frame range")
            raise RuntimeError(f"unit {unit.id} is not a chunk of a video: {unit.items[:1]!r}")
        with self._held_lock:
            self._held.add(unit.id)
        return unit.id, unit.items[0]

    def _done(self, db: WorkQueue, uid: str, stats: dict[str, Any]) -> None:
        # who did the chunk, on which device, and when it ended: the job's report per worker and over time
        stats = {
            **stats,
            "worker": self.spec.name,
            "device": self.spec.profile.device,
            "done_at": time.time(),
        }
        db.complete(uid, self.owner, stats)
        db.add_progress(self.owner, int(stats["frames"]), int(stats["faces"]), 0, float(stats["seconds"]))
        with self._held_lock:
            self._held.discard(uid)

    def _failed(self, db: WorkQueue, uid: str, item: FrameRange, e: BaseException) -> None:
        from facefleet.video.chunks import drop_chunk_files

        drop_chunk_files(self.spec.out_dir, item)
        msg = str(e) if str(e).startswith(item.source) else f"{item.source}: {e}"
        print(
            f"facefleet worker {self.spec.name}: frames {item.start}..{item.stop - 1}: {msg}", file=sys.stderr
        )
        db.release(uid, self.owner, msg)
        with self._held_lock:
            self._held.discard(uid)

    def _heartbeat(self) -> None:
        keep_leases(self.spec, self.owner, self._held_now, self._stop)

    def _held_now(self) -> list[str]:
        with self._held_lock:
            return list(self._held)
