"""The engine object: long-lived, runs jobs (each on its own thread) and publishes their typed
events; :func:`run` is the one-call Python API and what ``facefleet run`` calls.

::

    engine = Engine()
    engine.subscribe(print)                      # every event of every job
    job_id = engine.submit(Job("photos/", "out/", RunOptions(devices="cpu")))
    for event in engine.events(job_id): ...      # or iterate over one job's events
    summary = engine.wait(job_id)                # RunSummary; raises EngineError if it failed

A job holds OUT's lock (``OUT/.lock``) while it runs: a second job on the same OUT, from this
engine or any other process, is refused. :meth:`Engine.cancel` drains a job (its workers finish the
units they hold), a second cancel stops it at once.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from facefleet.config import JobConfig, RunConfig, apply_mapping, resolve
from facefleet.engine import events as ev
from facefleet.engine.coordinator import Coordinator
from facefleet.engine.executors import Executor, make_executor
from facefleet.engine.jobplan import JobPlan
from facefleet.engine.layout import (
    EngineError,
    RunLock,
    changed_settings,
    check_or_write_record,
    clear_out,
    input_identity,
    input_root,
    make_out,
    settings_record,
)
from facefleet.engine.queue import QUEUE_FILE, QueueError, open_queue, public_url
from facefleet.engine.totals import RunSummary
from facefleet.engine.worker.spec import file_writers
from facefleet.platforms import plan_devices

DEFAULT_UNIT_SIZE = 256  # images per unit when [run] unit_size is unset (the lister may use fewer)


@dataclass(frozen=True)
class RunOptions:
    """A job's options: the Python API's keyword arguments of :func:`run`. ``config`` (a
    :class:`~facefleet.config.JobConfig`, a TOML-shaped mapping or a file) holds the settings; the
    setting options below are shortcuts over it (``None``: the config's value), made typed once by
    :func:`job_config`. ``force``, ``log_json``, ``executor`` (an instance) and ``report`` are the
    job's own; ``reconstructor_kwargs`` are keyword arguments of a custom ``reconstructor`` callable
    only (JSON values), never facefleet's settings."""

    devices: str = "auto"
    formats: Sequence[str] | None = None
    batch_size: int | None = None
    precision: str | None = None
    unit_size: int | None = None
    workers: int | None = None
    gpu_workers: int | None = None
    config: JobConfig | str | os.PathLike[str] | Mapping[str, Any] | None = None
    force: bool = False
    log_json: str | os.PathLike[str] | None = None
    lease_seconds: float | None = None
    max_attempts: int | None = None
    max_restarts: int | None = None
    model_dir: str | os.PathLike[str] | None = None
    texture_size: int | None = None
    reconstructor: str | None = None
    reconstructor_kwargs: Mapping[str, Any] | None = None
    model: Mapping[str, Any] | None = None
    executor: str | Executor | None = None
    report: bool = True


@dataclass(frozen=True)
class Job:
    """One job: every image of ``input`` (folder, glob, list file, URL, or a list of them) into
    ``out``."""

    input: str | os.PathLike[str] | Sequence[str]
    out: str | os.PathLike[str]
    options: RunOptions = field(default_factory=RunOptions)

    @classmethod
    def from_config(
        cls,
        input: str | os.PathLike[str] | Sequence[str],
        out: str | os.PathLike[str],
        config: JobConfig,
        **options: Any,
    ) -> Job:
        """A job of a typed :class:`~facefleet.config.JobConfig` (``options``: the fields of
        :class:`RunOptions` that are not settings, e.g. ``force``, ``log_json``)."""
        return cls(input, out, RunOptions(config=config, **options))


@dataclass
class _Running:
    job: Job
    thread: threading.Thread
    coordinator: Coordinator | None = None
    summary: RunSummary | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancels: int = 0


class Engine:
    """Runs jobs and publishes their events; one engine serves any number of jobs over its life."""

    def __init__(self) -> None:
        self.bus = ev.EventBus()
        self._jobs: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def subscribe(self, callback: ev.Callback, job_id: str | None = None) -> Any:
        """``callback(event)`` for every event (of ``job_id`` only, if given); returns an unsubscribe
        function. Callbacks run on the job's thread: keep them short."""
        return self.bus.subscribe(callback, job_id)

    def events(self, job_id: str) -> Iterator[ev.Event]:
        """The events of a job from now on, ending with its :class:`~facefleet.engine.events.JobDone`
        (at once if the job has ended)."""
        stream = self.bus.stream(job_id)
        with self._lock:
            r = self._jobs[job_id]
        if r.done.is_set():
            stream.close()
            return iter(())
        return stream

    def submit(self, job: Job, *, subscribers: Iterable[ev.Callback] = ()) -> str:
        """Start a job on a thread of its own; returns its id. ``subscribers`` hear all of its events
        (subscribed before it starts, so they miss none)."""
        job_id = f"job-{next(self._ids)}-{os.getpid()}"
        for cb in subscribers:
            self.bus.subscribe(cb, job_id)
        thread = threading.Thread(target=self._run, args=(job_id,), name=job_id, daemon=True)
        with self._lock:
            self._jobs[job_id] = _Running(job, thread)
        thread.start()
        return job_id

    def cancel(self, job_id: str, signal_name: str | None = None) -> None:
        """Drain the job (first call: workers finish their units) or stop it now (second call)."""
        with self._lock:
            r = self._jobs[job_id]
            r.cancels += 1
        if r.coordinator is not None:
            r.coordinator.stop(signal_name)

    def wait(self, job_id: str, timeout: float | None = None) -> RunSummary:
        """The job's summary once it ended; raises its :class:`EngineError` (or TimeoutError)."""
        with self._lock:
            r = self._jobs[job_id]
        deadline = None if timeout is None else time.monotonic() + timeout
        while not r.done.wait(0.2):  # short waits: signal handlers of the main thread run between
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{job_id} still running after {timeout} s")
        if r.error is not None:
            raise r.error
        assert r.summary is not None
        return r.summary

    def _run(self, job_id: str) -> None:
        r = self._jobs[job_id]
        status, summary, error = "failed", None, None
        lock: RunLock | None = None
        try:
            plan, executor = plan_job(job_id, r.job)
            lock = RunLock(plan.out).acquire()
            if r.job.options.force:
                clear_out(plan.out)
                if "://" in plan.queue_url:  # a networked queue: this run's schema starts empty
                    with open_queue(plan.queue_url) as q:
                        q.reset()
            record = check_or_write_record(plan.out, plan.record, unit_size_given=plan.unit_size_given)
            plan = _with_record(plan, record)
            try:
                coord = Coordinator(plan, executor, self.bus.publish)
            except QueueError as e:
                raise EngineError(str(e).splitlines()[0]) from None
            r.coordinator = coord
            if r.cancels:
                coord.stop("SIGINT")
            summary = coord.run()
            r.summary = summary
            status = "interrupted" if summary.interrupted else "completed"
        except EngineError as e:
            r.error, error = e, str(e)
        except BaseException as e:
            r.error, error = e, f"{type(e).__name__}: {e}"
        finally:
            if lock is not None:
                lock.release()
            self.bus.publish(ev.JobDone(job_id, time.time(), status, summary, error))
            r.done.set()


def _with_record(plan: JobPlan, record: dict[str, Any]) -> JobPlan:
    from dataclasses import replace

    return replace(plan, record=record)


def job_config(o: RunOptions) -> JobConfig:
    """A job's settings as one typed :class:`JobConfig`: its ``config`` (an object, a TOML-shaped
    mapping, a file or None) with the options given as arguments over it (the Python API's keywords;
    the command line puts its flags in the config). The one place where loose options become typed;
    everything after this takes the config object."""
    cfg = resolve(o.config)
    executor = o.executor if isinstance(o.executor, str) or o.executor is None else o.executor.name
    run = {
        "formats": None if o.formats is None else _formats(o.formats),
        "unit_size": o.unit_size,
        "lease_seconds": o.lease_seconds,
        "max_attempts": o.max_attempts,
        "max_restarts": o.max_restarts,
        "model_dir": str(o.model_dir) if o.model_dir else None,
        "texture_size": o.texture_size,
        "reconstructor": o.reconstructor,
        "executor": executor,
    }
    given: dict[str, Any] = {"run": {k: v for k, v in run.items() if v is not None}}
    if o.model:
        given["model"] = dict(o.model)
    if o.devices not in (None, "auto"):
        given["devices"] = o.devices
    return apply_mapping(cfg, given, "arguments")


def _formats(formats: Sequence[str]) -> tuple[str, ...]:
    items = formats.split(",") if isinstance(formats, str) else formats
    return tuple(dict.fromkeys(f.strip().lower() for f in items if f.strip()))


def resolved_run(run: RunConfig, workers: int) -> RunConfig:
    """``[run]`` with what the planner decides filled in: unit size, restart budget and file writers
    for ``workers`` worker processes, the formats in one order."""
    return replace(
        run,
        unit_size=run.unit_size or DEFAULT_UNIT_SIZE,
        max_restarts=run.max_restarts if run.max_restarts is not None else 2 * workers + 2,
        writers=run.writers or file_writers(workers),
        formats=tuple(sorted(set(run.formats))),
    )


def plan_job(job_id: str, job: Job) -> tuple[JobPlan, Executor]:
    """Resolve a job (its typed config, the device plan) into a :class:`JobPlan`; checks INPUT
    before OUT is touched (a missing or empty INPUT is an error here)."""
    o = job.options
    try:
        cfg = job_config(o)
        profiles = plan_devices(
            None,
            config=cfg,
            batch_size=o.batch_size,
            precision=o.precision,
            cpu_workers=o.workers,
            gpu_workers=o.gpu_workers,
        )
        executor = o.executor if isinstance(o.executor, Executor) else make_executor(cfg.run.executor)
    except ValueError as e:
        raise EngineError(str(e)) from None
    if o.reconstructor_kwargs and not cfg.run.reconstructor:
        raise EngineError("reconstructor_kwargs need a custom reconstructor (MODULE:CALLABLE)")
    unit_size_given = cfg.run.unit_size is not None
    cfg = replace(cfg, run=resolved_run(cfg.run, len(profiles)))
    run = cfg.run
    out = Path(os.path.abspath(job.out))
    check_input(job.input)
    queue_url = cfg.queue.url or str(out / QUEUE_FILE)
    record = {
        "input": input_identity(job.input),
        "output": str(out),
        "unit_size": run.unit_size,
        "formats": list(run.formats),
        "devices": cfg.devices,
        "batch_size": o.batch_size,
        "precision": o.precision,
        "workers": len(profiles),
        "lease_seconds": run.lease_seconds,
        "max_attempts": run.max_attempts,
        "texture_size": run.texture_size,
        "model": changed_settings(cfg.model),
        "model_dir": run.model_dir,
        "config_file": str(o.config) if isinstance(o.config, (str, os.PathLike)) else None,
        "executor": run.executor if not isinstance(o.executor, Executor) else o.executor.name,
        "profiles": [p.to_dict() for p in profiles],
        "queue": public_url(queue_url) if "://" in queue_url else None,
        "settings": settings_record(cfg.model, run),
    }
    plan = JobPlan(
        job_id=job_id,
        input_spec=job.input,
        out=out,
        queue_url=queue_url,
        profiles=tuple(profiles),
        config=cfg,
        input_root=input_root(job.input),
        reconstructor_args=tuple(dict(o.reconstructor_kwargs or {}).items()),
        record=record,
        unit_size_given=unit_size_given,
        report=o.report,
        log_json=Path(o.log_json) if o.log_json else None,
    )
    make_out(out)
    return plan, executor


def check_input(spec: Any) -> None:
    """Fail now, with one line, for an INPUT that is missing or lists no image file."""
    from facefleet.engine.listing import _one_line, _spec_text
    from facefleet.io.discover import iter_inputs

    it = iter_inputs(list(spec) if isinstance(spec, (list, tuple)) else spec)
    try:
        next(it)
    except StopIteration:
        raise EngineError(
            f"no image files found in {_spec_text(spec)} (looked for .jpg .jpeg .png .webp .bmp .tif .tiff "
            ".gif files, recursively)"
        ) from None
    except (OSError, ValueError) as e:
        raise EngineError(_one_line(e, spec)) from None
    finally:
        it.close()


# -- the progress line -------------------------------------------------------------------------
class ProgressPrinter:
    """Subscriber that prints a job's progress line and notes (``\\r``-updated on a terminal, a line
    every 30 s otherwise)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = float("-inf")
        self._open = False

    def __call__(self, e: ev.Event) -> None:
        if isinstance(e, ev.Progress):
            if e.t - self._last < (0.5 if self.tty else 30.0):
                return
            self._last = e.t
            self._write(progress_line(e), transient=self.tty)
        elif isinstance(e, ev.Error):
            self._write(f"facefleet: {e.message}")
        elif isinstance(e, ev.JobDone) and self._open:
            self.stream.write("\n")
            self._open = False

    def _write(self, text: str, transient: bool = False) -> None:
        import shutil

        if self.tty:
            cols = shutil.get_terminal_size((120, 20)).columns
            self.stream.write("\r\x1b[K" + (text[: cols - 1] if transient else text + "\n"))
            self._open = transient
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def progress_line(p: ev.Progress) -> str:
    if p.listed and p.listing_done:
        parts = [f"{p.done}/{p.listed} images {100.0 * p.done / max(p.listed, 1):.0f}%"]
    else:
        parts = [f"{p.done} images" + (f" (listed {p.listed}...)" if p.listed else "")]
    parts.append(f"{p.images_per_s:.1f} img/s {p.faces_per_s:.1f} faces/s")
    if p.eta_seconds is not None:
        parts.append(f"ETA {_hms(p.eta_seconds)}")
    if p.failed:
        parts.append(f"{p.failed} failed")
    per = " ".join(f"{name} {rate:.0f}/s" for name, rate in p.per_device)
    return " | ".join(parts) + (f"  [{per}]" if per else "")


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# -- the one-call API --------------------------------------------------------------------------
def run(
    input_spec: str | os.PathLike[str] | Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    quiet: bool = False,
    progress_stream: TextIO | None = None,
    engine: Engine | None = None,
    **options: Any,
) -> RunSummary:
    """Reconstruct every image of ``input_spec`` into ``out_dir`` (resuming a previous run into the
    same ``out_dir``; ``force=True`` starts over); ``options`` are the fields of :class:`RunOptions`.

    On the main thread, SIGINT and SIGTERM drain the run (a second one stops it now); the summary's
    ``exit_code`` is then 130 (SIGINT) or 143 (SIGTERM). Raises :class:`EngineError` for problems that
    stop the run, with a one-line message.
    """
    eng = engine or Engine()
    subs = [] if quiet else [ProgressPrinter(progress_stream)]
    job_id = eng.submit(Job(input_spec, out_dir, RunOptions(**options)), subscribers=subs)
    old = _install_signals(eng, job_id)
    try:
        return eng.wait(job_id)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _install_signals(eng: Engine, job_id: str) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        eng.cancel(job_id, signal.Signals(signum).name)

    old: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return old
