"""A video job (``facefleet video``): videos cut into chunks that are units of the engine's queue, worker
processes on every device of this host that claim them, and each video's outputs once its chunks are done.

::

    summary = run_video(["talk.mp4", "clips/"], "out/", JobConfig(video=VideoConfig(formats=("parquet",))))

The queue is the photo engine's (SQLite in ``OUT/_queue.sqlite`` by default, PostgreSQL with ``[queue]
url``), so a chunk is claimed, leased, retried and completed as a unit of photos is, and any number of
workers share one video. Re-running the same command resumes: chunks already done are kept, new videos
are added, and videos whose outputs are missing are finished. A video that cannot be read gets one error
line naming it and the reason, and every other video goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from facefleet.config import JobConfig
from facefleet.engine.executors import Executor, make_executor
from facefleet.engine.layout import EngineError, RunLock, clear_out, make_out, publish_run
from facefleet.engine.queue import QUEUE_FILE, open_queue
from facefleet.engine.worker.poison import reap_poison
from facefleet.engine.worker.spec import WorkerSpec
from facefleet.io.atomic import atomic_write_bytes
from facefleet.platforms import plan_devices
from facefleet.sources.items import FrameRange

#: file extensions a folder is searched for (a file named on the command line is tried whatever its name)
VIDEO_EXTENSIONS = frozenset(
    [
        ".mp4",
        ".mov",
        ".m4v",
        ".mkv",
        ".webm",
        ".avi",
        ".ts",
        ".mts",
        ".m2ts",
        ".mpg",
        ".mpeg",
        ".wmv",
        ".flv",
        ".3gp",
        ".ogv",
        ".mxf",
    ]
)
RECORD = "video_run.json"


@dataclass
class VideoSummary:
    """What a video job did: per video its outputs (format -> path) or its error."""

    out_dir: str
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> device, chunks, frames, busy s
    timeline: list[tuple[int, int]] = field(default_factory=list)  # (second since the first chunk, frames)

    @property
    def exit_code(self) -> int:
        """0 every video done, 1 some failed, 130 interrupted."""
        return 130 if self.interrupted else 1 if self.errors else 0


def find_videos(inputs: Sequence[str]) -> list[str]:
    """Absolute paths of the videos named by ``inputs``, found as a photo job finds its images
    (:func:`facefleet.io.discover.iter_inputs`): files as given, folders walked recursively for
    :data:`VIDEO_EXTENSIONS`, globs, list files of paths. A missing input is kept as it is named (its
    error comes with the others', and the other videos go on)."""
    from facefleet.io.discover import iter_inputs

    out: list[str] = []
    for spec in inputs:
        try:
            out += [str(Path(p).resolve()) for p in iter_inputs(spec, extensions=VIDEO_EXTENSIONS)]
        except FileNotFoundError:
            out.append(str(Path(spec).resolve()))
    return list(dict.fromkeys(out))


def videos_in(spec: str | os.PathLike[str]) -> list[str]:
    """The videos among a photo job's INPUT (``facefleet run`` hands them to :func:`run_video`): those
    :func:`find_videos` finds in a local folder or list file with a video extension (a list's images
    are the photo job's); none for other inputs."""
    from facefleet.io.discover import LIST_EXTENSIONS

    p = Path(spec)
    if not (p.is_dir() or (p.suffix.lower() in LIST_EXTENSIONS and p.is_file())):
        return []
    return [v for v in find_videos([str(p)]) if Path(v).suffix.lower() in VIDEO_EXTENSIONS]


def _root(videos: Sequence[str], inputs: Sequence[str]) -> str:
    """The folder the outputs mirror: the one folder given, else the videos' common folder."""
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        return str(Path(inputs[0]).resolve())
    parents = [os.path.dirname(v) for v in videos] or [os.getcwd()]
    return os.path.commonpath(parents)


def unit_id(item: FrameRange) -> str:
    key = f"{item.source}\0{item.start}\0{item.count}".encode("utf-8", "surrogateescape")
    return "v" + hashlib.sha1(key).hexdigest()[:20]


def _settings(cfg: JobConfig) -> dict[str, Any]:
    """What a chunk's files depend on: a resumed job must have the same (else --force)."""
    d = cfg.to_dict()
    return {"model": d["model"], "video": {k: v for k, v in d["video"].items() if k != "formats"}}


def plan_videos(
    videos: Sequence[str], cfg: JobConfig
) -> tuple[dict[str, tuple[Any, list[FrameRange]]], dict[str, str]]:
    """Probe every video and cut it into chunks: ``({path: (VideoInfo, chunks)}, {path: error})``."""
    from facefleet.io.video import VideoError, plan_chunks, probe_video

    plans: dict[str, tuple[Any, list[FrameRange]]] = {}
    errors: dict[str, str] = {}
    for v in videos:
        try:
            info = probe_video(v)
        except (VideoError, ImportError) as e:
            errors[v] = str(e)
            continue
        plans[v] = (info, plan_chunks(info, cfg.video.chunk_frames))
    return plans, errors


def run_video(
    inputs: Sequence[str],
    out: str | os.PathLike[str],
    config: JobConfig | None = None,
    *,
    quiet: bool = False,
    force: bool = False,
    executor: Executor | None = None,
    stream: TextIO | None = None,
    stop: VideoStop | None = None,
    on_progress: Callable[[VideoProgress], None] | None = None,
) -> VideoSummary:
    """Process ``inputs`` (video files, folders, lists) into ``out`` (see the module docstring).
    ``stop`` lets another thread drain or stop the job; ``on_progress`` hears its progress every second."""
    cfg = config or JobConfig()
    if "anonymize" in cfg.video.formats and cfg.video.anonymize_detector != "model":
        # anonymising needs the detector that finds small and turned faces too
        cfg = replace(cfg, model=replace(cfg.model, detector=cfg.video.anonymize_detector))
    err = stream or sys.stderr
    t0 = time.time()
    out_dir = Path(os.path.abspath(out))
    if not inputs:
        raise EngineError("no input: name video files, folders or lists of them")
    videos = find_videos(inputs)
    if not videos:
        raise EngineError(f"no video found in {', '.join(map(str, inputs))}")
    profiles = plan_devices(None, config=cfg)
    workers = len(profiles)
    run = replace(
        cfg.run, max_restarts=cfg.run.max_restarts if cfg.run.max_restarts is not None else 2 * workers + 2
    )
    make_out(out_dir)
    summary = VideoSummary(out_dir=str(out_dir))
    with RunLock(out_dir):
        if force:
            clear_out(out_dir)
            _rmtree(out_dir / "_chunks")
            (out_dir / RECORD).unlink(missing_ok=True)
        _check_record(out_dir, cfg, force)
        plans, errors = plan_videos(videos, cfg)
        for v, e in errors.items():
            summary.errors[v] = e
            print(f"facefleet video: {e}", file=err)
        queue_url = cfg.queue.url or str(out_dir / QUEUE_FILE)
        q = open_queue(queue_url)
        try:
            if force:  # a networked queue outlives OUT's files: forget its units too
                q.reset()
            q.add_units((unit_id(c), (c,)) for _, chunks in plans.values() for c in chunks)
            q.set_meta("drain", "0")
            # what workers started elsewhere (facefleet worker --queue URL) take from the queue
            publish_run(q, video_record(cfg, run))
            q.set_meta("listing_done", "1")
            # chunks held per worker: its batch size, but no more than its share of this job's chunks
            share = -(-q.remaining() // max(1, workers))
            spec_of = lambda name, prof: WorkerSpec(  # noqa: E731
                name=name, out_dir=str(out_dir), profile=prof, model=cfg.model, run=run,
                queue_url=cfg.queue.url, coordinator_pid=os.getpid(), job="video", video=cfg.video,
                streams=max(1, min(prof.batch_size, share)),
            )  # fmt: skip
            total = sum(info.frames for info, _ in plans.values())
            if q.remaining():
                sup = _Supervisor(
                    q, out_dir, spec_of, executor or make_executor(run.executor), run, total,
                    stop or VideoStop(), on_progress, quiet, err,
                )  # fmt: skip
                summary.interrupted = sup.supervise(profiles)
            reap_poison(q, out_dir, run.max_attempts)
            finished = list(q.unit_stats())
            states = {uid: state for uid, state, _ in finished}
            stats = {uid: st for uid, _, st in finished}
            root = _root(list(plans), inputs)
            for v, (info, chunks) in plans.items():
                ids = [unit_id(c) for c in chunks]
                bad = [i for i in ids if states.get(i) == "failed"]
                if bad:
                    summary.errors[v] = q.last_error(bad[0]) or f"{v}: a chunk failed"
                    print(f"facefleet video: {summary.errors[v]}", file=err)
                    continue
                if any(states.get(i) != "done" for i in ids):
                    continue  # interrupted: the next run finishes it
                summary.outputs[v] = _finish(v, info, chunks, str(out_dir), root, cfg)
                summary.frames += info.frames
                summary.faces += sum(int(stats.get(i, {}).get("faces", 0)) for i in ids)
            summary.workers, summary.timeline = throughput(stats.values())
        finally:
            q.close()
        summary.seconds = time.time() - t0
        _write_summary(out_dir, summary)
    return summary


def video_record(cfg: JobConfig, run: Any) -> dict[str, Any]:
    """The job's record in its queue: ``facefleet worker`` on any host builds its video workers from it
    (the ``[model]``, ``[run]`` and ``[video]`` settings every host must share)."""
    from facefleet.config.loading import section_to_json
    from facefleet.engine.layout import settings_record

    return {"job": "video", "input": None, "settings": settings_record(cfg.model, run),
            "video": section_to_json(cfg.video)}  # fmt: skip


def _finish(
    v: str, info: Any, chunks: list[FrameRange], out_dir: str, root: str, cfg: JobConfig
) -> dict[str, str]:
    from facefleet.export.sink import output_location
    from facefleet.video.finish import finish_video

    rel_dir, name = output_location(v, root)
    base = Path(out_dir) / rel_dir / name
    done = finish_video(v, chunks, out_dir, base, cfg.video.formats, info.frames)
    return done.files


class VideoStop:
    """Stops a running :func:`run_video` from another thread (the service's cancel and shutdown): the
    first :meth:`request` drains (workers finish the chunks they hold and exit; the next run resumes),
    the second kills the workers now (their chunks are redone by the next run)."""

    def __init__(self) -> None:
        self.drain = threading.Event()
        self.kill = threading.Event()

    def request(self) -> None:
        (self.kill if self.drain.is_set() else self.drain).set()


@dataclass(frozen=True)
class VideoProgress:
    """A running video job's progress, read from its queue: ``frames`` and ``faces`` of the chunks done
    (``new_frames`` of them by this run, in ``seconds``), of ``total`` frames in ``chunks`` chunks."""

    frames: int
    faces: int
    total: int
    chunks_done: int
    chunks: int
    new_frames: int
    new_faces: int
    seconds: float

    @property
    def frames_per_s(self) -> float:
        """This run's rate (chunks done by an earlier run are not counted)."""
        return self.new_frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Supervisor:
    """Starts a worker per profile, restarts those that die while chunks remain (up to ``run.max_restarts``),
    fails chunks that used up their attempts (:func:`~facefleet.engine.worker.poison.reap_poison`), and
    reports progress every second (a line on ``err`` unless ``quiet``, and ``on_progress``)."""

    q: Any
    out_dir: Path
    spec_of: Callable[[str, Any], WorkerSpec]
    executor: Executor
    run: Any
    total: int
    stop: VideoStop
    on_progress: Callable[[VideoProgress], None] | None
    quiet: bool
    err: TextIO

    def __post_init__(self) -> None:
        self.t0 = time.time()
        self.before = self._done()[:2]  # frames and faces done by an earlier run of the job
        self.shown = -1  # frames done at the last progress line

    def supervise(self, profiles: Sequence[Any]) -> bool:
        """Runs the workers until no chunk is left or they drained; returns whether the job was
        interrupted (drained by ``stop`` or Ctrl-C with chunks left)."""
        from facefleet.engine.worker.spec import owner_id

        q, ex = self.q, self.executor
        if ex.name == "external":  # workers elsewhere (facefleet worker --queue URL): one handle watches them
            profiles = profiles[:1]
        names = [f"w{i}:{p.device}" for i, p in enumerate(profiles)]
        handles = {name: ex.start(self.spec_of(name, p)) for name, p in zip(names, profiles, strict=True)}
        restarts, draining, last = 0, False, 0.0
        try:
            while handles:
                if self.stop.drain.is_set() and not draining:
                    draining = True
                    q.set_meta("drain", "1")  # workers claim no more chunks
                if self.stop.kill.is_set():
                    for h in handles.values():
                        h.kill()
                if not draining and not q.remaining():
                    break
                time.sleep(0.2)
                for name, h in list(handles.items()):
                    code = h.exitcode
                    if code is None:
                        continue
                    if code != 0:
                        q.release_owner(owner_id(name, h.pid or 0), f"worker {name} died (exit code {code})")
                        if not draining:
                            print(f"facefleet video: worker {name} died (exit code {code})", file=self.err)
                    reap_poison(q, self.out_dir, self.run.max_attempts)
                    if not draining and q.remaining() and restarts < (self.run.max_restarts or 0):
                        restarts += 1
                        handles[name] = ex.start(self.spec_of(name, h.spec.profile))
                    else:
                        del handles[name]
                if not handles and not draining and q.remaining():
                    raise EngineError(
                        f"every worker died; {q.remaining()} chunks left (see the errors above)"
                    )
                if handles and time.time() - last >= 1.0:
                    last = time.time()
                    self._report(len(handles))
        except KeyboardInterrupt:
            draining = True
            q.set_meta("drain", "1")
        finally:
            for h in handles.values():
                h.join(timeout=None if draining else 60)
                h.kill()
        self._report(None)  # the chunks done since the last report
        return draining and bool(q.remaining())  # a drain that found every chunk done interrupted nothing

    def _done(self) -> tuple[int, int, int]:
        """Frames, faces and chunks of the chunks done, from the queue."""
        done = [st for _, state, st in self.q.unit_stats() if state == "done"]
        return (
            sum(int(st.get("frames", 0)) for st in done),
            sum(int(st.get("faces", 0)) for st in done),
            len(done),
        )

    def _progress(self) -> VideoProgress:
        frames, faces, chunks_done = self._done()
        return VideoProgress(
            frames=frames, faces=faces, total=self.total, chunks_done=chunks_done,
            chunks=sum(c["units"] for c in self.q.counts().values()),
            new_frames=frames - self.before[0], new_faces=faces - self.before[1],
            seconds=time.time() - self.t0,
        )  # fmt: skip

    def _report(self, workers: int | None) -> None:
        p = self._progress()
        if self.on_progress is not None:
            self.on_progress(p)
        if not self.quiet and p.frames != self.shown:
            self.shown = p.frames
            print(
                f"video: {p.frames}/{p.total} frames, {p.frames_per_s:.0f} frames/s"
                + ("" if workers is None else f", {workers} workers"),
                file=self.err,
                flush=True,
            )


def _check_record(out_dir: Path, cfg: JobConfig, force: bool) -> None:
    """OUT's settings: written on the first run; a later run with other settings is refused (its chunks
    would mix two settings) unless --force."""
    path = out_dir / RECORD
    want = _settings(cfg)
    if path.exists() and not force:
        have = json.loads(path.read_text())
        if have != want:
            changed = sorted(
                f"{s}.{k}" for s in want for k in set(want[s]) | set(have.get(s, {}))
                if want[s].get(k) != have.get(s, {}).get(k)
            )  # fmt: skip
            raise EngineError(
                f"{out_dir} holds a video job with other settings ({', '.join(changed)}): use the same "
                "settings to resume it, or --force to start over"
            )
        return
    atomic_write_bytes(path, json.dumps(want, indent=1).encode())


def throughput(stats: Any) -> tuple[dict[str, dict[str, Any]], list[tuple[int, int]]]:
    """Per worker (device, chunks, frames, busy seconds) and frames done per second of the job (by the
    time each chunk ended) from the done chunks' stats."""
    workers: dict[str, dict[str, Any]] = {}
    ends: list[tuple[float, int]] = []
    for st in stats:
        if "worker" not in st:
            continue
        w = workers.setdefault(
            st["worker"], {"device": st.get("device"), "chunks": 0, "frames": 0, "busy_s": 0.0}
        )
        w["chunks"] += 1
        w["frames"] += int(st.get("frames", 0))
        w["busy_s"] = round(w["busy_s"] + float(st.get("seconds", 0.0)), 3)
        ends.append((float(st["done_at"]), int(st.get("frames", 0))))
    per_second: dict[int, int] = {}
    if ends:
        first = min(t for t, _ in ends)
        for t, n in ends:
            per_second[int(t - first)] = per_second.get(int(t - first), 0) + n
    return workers, sorted(per_second.items())


def _write_summary(out_dir: Path, s: VideoSummary) -> None:
    data = {
        "outputs": s.outputs,
        "errors": s.errors,
        "frames": s.frames,
        "faces": s.faces,
        "seconds": s.seconds,
        "workers": s.workers,
        "frames_per_second": [[t, n] for t, n in s.timeline],
    }
    atomic_write_bytes(out_dir / "video_summary.json", json.dumps(data, indent=1).encode())


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
