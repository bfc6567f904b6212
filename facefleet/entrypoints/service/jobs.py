"""Service jobs: photo folders and videos through the engine, recorded so a restarted server resumes
them.

A job's folder is ``DATA/jobs/ID``: ``input/`` (its uploaded files, if any) and ``out/`` (the engine's
OUT: its queue, manifest, report and files). Photo jobs run on the one long-lived
:class:`~facefleet.engine.engine.Engine` (its worker processes, its durable queue), and their events
keep the job's record current; video jobs run :func:`~facefleet.engine.video_job.run_video` on a
thread, which reports their progress every second. Cancel and shutdown stop both kinds the same way:
a first request drains the job, a second stops it now. A server killed mid-job finds the job
``running`` in its store when it starts again and submits it again: the engine resumes from OUT's
queue, so every input is done exactly once.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from facefleet.config import JobConfig
from facefleet.engine import events as ev
from facefleet.engine.engine import Engine, Job, RunOptions
from facefleet.engine.video_job import VideoProgress, VideoStop, run_video
from facefleet.entrypoints.service.store import ACTIVE, JobRecord, ServiceStore

PROGRESS_WRITE_S = 1.0  # a running job's record is written at most this often


class JobManager:
    """Creates, runs, resumes and cancels the service's jobs. ``on_event`` hears every engine event of
    every photo job, ``on_count(frames, faces)`` a video job's frames as its chunks are done, and
    ``on_done(record)`` each job that ends (metrics, quotas)."""

    def __init__(
        self,
        store: ServiceStore,
        data_dir: Path,
        config: JobConfig,
        *,
        on_event: Callable[[ev.Event], None] | None = None,
        on_done: Callable[[JobRecord], None] | None = None,
        on_count: Callable[[int, int], None] | None = None,
    ) -> None:
        self.store = store
        self.jobs_dir = Path(data_dir) / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.engine = Engine()
        self._on_event_hook = on_event
        self._on_done = on_done
        self._on_count = on_count
        self._lock = threading.Lock()
        # each running job's stop: the first call drains it (workers finish what they hold), the second
        # stops it now
        self._stops: dict[str, Callable[[], None]] = {}
        self._last_write: dict[str, float] = {}
        self._video_counted: dict[str, tuple[int, int]] = {}  # frames, faces already counted
        self._cancelled: set[str] = set()
        self._shutting_down = threading.Event()

    # -- creating -----------------------------------------------------------------------------
    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its folder (uploads go to ``folder/input`` before :meth:`create`)."""
        job_id = uuid.uuid4().hex[:16]
        folder = self.jobs_dir / job_id
        folder.mkdir(parents=True)
        return job_id, folder

    def create(
        self, job_id: str, key: str, kind: str, inputs: Sequence[str], options: dict[str, Any]
    ) -> JobRecord:
        """Record a new job and start it."""
        out = self.jobs_dir / job_id / "out"
        record = self.store.add(
            JobRecord(
                id=job_id,
                key=key,
                kind=kind,
                state="queued",
                inputs=tuple(inputs),
                out=str(out),
                options=dict(options),
            )
        )
        self._start(record)
        return record

    def resume_all(self) -> list[str]:
        """Start every job the store holds as queued or running (after a restart); returns their ids."""
        ids = []
        for record in reversed(self.store.list(states=ACTIVE)):
            self._start(record)
            ids.append(record.id)
        return ids

    def job_config(self, record: JobRecord) -> JobConfig:
        """The config a job runs with: the server's, with the job's formats and, with a networked queue,
        the job's own schema of it (``SCHEMA_jID``), so jobs never share units."""
        cfg = self.config
        if cfg.queue.url and "://" in cfg.queue.url:
            cfg = replace(cfg, queue=replace(cfg.queue, url=job_queue_url(cfg.queue.url, record.id)))
        formats = tuple(record.options.get("formats") or ())
        if record.kind == "video":
            return replace(cfg, video=replace(cfg.video, formats=formats or cfg.video.formats))
        return replace(cfg, run=replace(cfg.run, formats=formats))

    # -- running ------------------------------------------------------------------------------
    def _start(self, record: JobRecord) -> None:
        self.store.update(record.id, state="running", started=record.started or time.time(), error=None)
        if record.kind == "video":
            stop = VideoStop()
            with self._lock:
                self._stops[record.id] = stop.request
            t = threading.Thread(
                target=self._run_video, args=(record, stop), name=f"video-{record.id}", daemon=True
            )
            t.start()
            return
        # one input is given as itself, so that its files mirror the tree under it (OUT/files/...)
        spec: str | list[str] = record.inputs[0] if len(record.inputs) == 1 else list(record.inputs)
        job = Job(spec, record.out, RunOptions(config=self.job_config(record), report=True))
        with self._lock:  # held: the job may end before submit returns
            eid = self.engine.submit(job, subscribers=[functools.partial(self._on_event, record.id)])
            self._stops[record.id] = functools.partial(self.engine.cancel, eid, "SIGTERM")

    def _on_event(self, job_id: str, e: ev.Event) -> None:
        if self._on_event_hook is not None:
            self._on_event_hook(e)
        if isinstance(e, ev.Progress):
            now = time.monotonic()
            if now - self._last_write.get(job_id, 0.0) < PROGRESS_WRITE_S:
                return
            self._last_write[job_id] = now
            self.store.update(
                job_id,
                done=e.done,
                total=e.listed if e.listing_done else None,
                images=e.images,
                faces=e.faces,
                failed=e.failed,
                rate=round(e.images_per_s, 2),
            )
        elif isinstance(e, ev.JobDone):
            s = e.summary
            counts = {} if s is None else {"images": s.images, "faces": s.faces, "failed": s.failed}
            if s is not None and e.status == "completed":
                counts.update(done=s.images, total=s.images)
            self._finished(job_id, e.status, e.error, counts)

    def _run_video(self, record: JobRecord, stop: VideoStop) -> None:
        try:
            s = run_video(
                list(record.inputs), record.out, self.job_config(record), quiet=True, stop=stop,
                on_progress=functools.partial(self._video_progress, record.id),
            )  # fmt: skip
        except Exception as e:
            self._finished(record.id, "failed", f"{type(e).__name__}: {e}".splitlines()[0], {})
            return
        error = "; ".join(s.errors.values()) or None
        status = "interrupted" if s.interrupted else "failed" if error and not s.outputs else "completed"
        # the summary counts finished videos; an interrupted job's record keeps its last progress instead
        counts = {} if s.interrupted else {"images": s.frames, "faces": s.faces, "failed": len(s.errors)}
        if status == "completed":
            counts.update(done=s.frames, total=s.frames)
        self._finished(record.id, status, error, counts)

    def _video_progress(self, job_id: str, p: VideoProgress) -> None:
        """A video job's progress (every second): its record, and the frames and faces done since the
        last report for the metrics."""
        with self._lock:
            last = self._video_counted.get(job_id, (0, 0))
            self._video_counted[job_id] = (p.new_frames, p.new_faces)
        if self._on_count is not None and p.new_frames > last[0]:
            self._on_count(p.new_frames - last[0], p.new_faces - last[1])
        self.store.update(
            job_id, done=p.frames, total=p.total, images=p.frames, faces=p.faces,
            rate=round(p.frames_per_s, 2),
        )  # fmt: skip

    def _finished(self, job_id: str, status: str, error: str | None, counts: dict[str, int]) -> None:
        with self._lock:
            self._stops.pop(job_id, None)
            self._video_counted.pop(job_id, None)
            cancelled = job_id in self._cancelled
        if status == "interrupted" and not cancelled:
            # drained by a shutdown: left running in the store, resumed by the next start
            self.store.update(job_id, state="queued", **counts)
            return
        state = "cancelled" if cancelled else "completed" if status == "completed" else "failed"
        error = " ".join(error.split())[:1000] if error else None  # one line
        record = self.store.update(job_id, state=state, error=error, finished=time.time(), **counts)
        if self._on_done is not None:
            self._on_done(record)

    # -- stopping -----------------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobRecord:
        """Stop a job now (its finished inputs stay in its outputs); the record says ``cancelled``."""
        with self._lock:
            self._cancelled.add(job_id)
            stop = self._stops.get(job_id)
        record = self.store.get(job_id)
        if record is None:
            raise KeyError(job_id)
        if stop is not None:
            stop()
            stop()  # the second call stops it at once
        elif record.state in ACTIVE:  # recorded active but not running here
            record = self.store.update(job_id, state="cancelled", finished=time.time())
        return self.store.get(job_id) or record

    def wait_idle(self, job_id: str, timeout: float) -> bool:
        """Wait until a job is no longer running here; True when it stopped in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = job_id in self._stops
            if not busy:
                return True
            time.sleep(0.1)
        return False

    def shutdown(self, grace_s: float) -> None:
        """Drain every running job (workers finish the units or chunks they hold) for up to ``grace_s``
        seconds, then stop them; their records stay active, so the next start resumes them."""
        self._shutting_down.set()
        with self._lock:
            running = dict(self._stops)
        for stop in running.values():
            stop()
        deadline = time.monotonic() + grace_s
        for jid, stop in running.items():
            if not self.wait_idle(jid, max(0.0, deadline - time.monotonic())):
                stop()
                self.wait_idle(jid, 10.0)


def job_queue_url(url: str, job_id: str) -> str:
    """A networked queue URL with the job's own schema: ``?schema=S`` becomes ``S_jJOBID`` (hosts
    that serve the job start ``facefleet worker --queue`` with it)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    opts = dict(parse_qsl(parts.query, keep_blank_values=True))
    opts["schema"] = f"{opts.get('schema') or 'facefleet'}_j{job_id}"[:63]
    return urlunsplit(parts._replace(query=urlencode(opts)))
