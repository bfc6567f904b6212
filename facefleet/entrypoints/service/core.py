"""The service object: everything ``facefleet serve`` runs, without HTTP. The REST routes
(:mod:`.app`) and the browser UI (:mod:`facefleet.entrypoints.ui`) are two faces of it.

::

    service = Service(JobConfig(service=ServiceConfig(data_dir="state")))
    service.start()                                    # warm batchers, resume jobs
    reply = service.reconstruct(jpeg_bytes, "a.jpg")   # a Reply (ImageResult), batched with others
    job = service.submit_job(key, "photos", ["/data/photos"], {"formats": ["json"]})
    service.store.get(job.id).progress
    service.close()

It holds the durable store (jobs, usage), the key ring and rate limiter, the metrics, one
:class:`~.batcher.DynamicBatcher` per device for synchronous requests and the :class:`~.jobs.JobManager`
for jobs.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facefleet.config import JobConfig
from facefleet.entrypoints.service.batcher import BatcherClosed, DynamicBatcher, Reply
from facefleet.entrypoints.service.jobs import JobManager
from facefleet.entrypoints.service.keys import ApiKey, KeyRing, RateLimiter, load_keys
from facefleet.entrypoints.service.metrics import ServiceMetrics
from facefleet.entrypoints.service.store import JOB_KINDS, JobRecord, ServiceStore, UsageMeter
from facefleet.entrypoints.service.uploads import HttpError, check_image_bytes, confine

#: the key record of a server run without keys ([service] auth = false)
ANONYMOUS = ApiKey(name="anonymous", sha256="0" * 64)


class Service:
    """See the module docstring. ``config.service`` holds the server's settings, the other sections
    its workers'."""

    def __init__(self, config: JobConfig, *, gpu_metrics: bool = True) -> None:
        s = config.service
        self.config = config
        self.settings = s
        self.data_dir = Path(s.data_dir).absolute()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if s.auth and not s.api_keys:
            raise ValueError(
                "[service] api_keys is not set: make a keys file (facefleet keys create NAME --file FILE) "
                "and pass --api-keys FILE, or --no-auth for a server on 127.0.0.1 only"
            )
        if not s.auth and not _is_loopback(s.host):
            raise ValueError(f"--no-auth is only allowed on 127.0.0.1 (host is {s.host}): use API keys")
        self.keys = KeyRing(load_keys(s.api_keys) if s.auth and s.api_keys else [])
        self._lock_file = _lock_data_dir(self.data_dir)
        self.limiter = RateLimiter()
        self.store = ServiceStore(self.data_dir / "service.sqlite")
        self.usage = UsageMeter(self.store)
        probe = _gpu_probe() if gpu_metrics else None
        self.metrics = ServiceMetrics(self.store.count_by_state, self.queue_depths, probe)
        self.jobs = JobManager(
            self.store, self.data_dir, config, on_event=self.metrics.on_job_event,
            on_count=functools.partial(self.metrics.count, "jobs"), on_done=self._job_done,
        )  # fmt: skip
        self.batchers: list[DynamicBatcher] = []
        self._next = 0
        self._lock = threading.Lock()
        self.started = 0.0

    # -- life ---------------------------------------------------------------------------------------
    def start(self, *, resume: bool = True) -> Service:
        """Build the batchers (each warms its networks on its own thread: /readyz says when) and resume
        the jobs a previous server left unfinished."""
        from facefleet.platforms import plan_devices

        profiles = plan_devices(None, config=self.config)
        gpus = [p for p in profiles if p.device != "cpu"]
        for p in gpus or profiles[:1]:
            self.batchers.append(
                DynamicBatcher(
                    functools.partial(self._build, p),
                    name=p.device,
                    max_batch=self.settings.max_batch,
                    wait_s=self.settings.batch_wait_ms / 1000.0,
                    max_pixels=self.settings.max_pixels,
                    on_batch=self.metrics.observe_batch,
                ).start()
            )
        if resume:
            self.jobs.resume_all()
        self.started = time.time()
        return self

    def _build(self, profile: Any) -> Any:
        from facefleet.pipeline import Reconstructor

        run = self.config.run
        kwargs: dict[str, Any] = {**self.config.model.arguments(), "texture_size": run.texture_size}
        if run.model_dir:
            kwargs["model_dir"] = run.model_dir
        if profile.device == "cpu":
            kwargs.update(runtime=profile.runtime)
        elif not profile.compile:
            kwargs["compiled"] = False
        rec = Reconstructor(device=profile.device, precision=profile.precision, **kwargs)
        rec.precompile()  # CUDA: torch.compile's code for the networks' fixed batch sizes (none elsewhere)
        rec.warmup()  # cuDNN plans and CUDA-graph captures: no request pays for either
        return rec

    def ready(self) -> tuple[bool, str]:
        """(ready, why not): every batcher has warm networks."""
        for b in self.batchers:
            if b.error is not None:
                return False, f"{b.name}: {type(b.error).__name__}: {b.error}"
            if not b.ready.is_set():
                return False, f"{b.name}: warming up"
        return bool(self.batchers), "ok" if self.batchers else "not started"

    def close(self) -> None:
        """Graceful stop: queued requests are answered, running jobs drain for ``shutdown_grace_s`` and
        stay recorded as active, so the next start resumes them."""
        for b in self.batchers:
            b.close()
        self.jobs.shutdown(self.settings.shutdown_grace_s)
        self.usage.close()
        self.store.close()
        self._lock_file.release()

    # -- who may call -------------------------------------------------------------------------------
    def authenticate(self, presented: str | None) -> ApiKey:
        """The caller's key record; :class:`HttpError` 401 for a missing or wrong key, 429 over its rate."""
        if not self.settings.auth:
            return ANONYMOUS  # limits are per key: a keyless server (127.0.0.1 only) has none
        key = self.keys.check(presented)
        if key is None:
            why = "missing API key" if not presented else "invalid API key"
            raise HttpError(
                401,
                f"{why}: send Authorization: Bearer KEY or X-API-Key: KEY",
                {"WWW-Authenticate": "Bearer"},
            )
        rate = key.rate_limit or self.settings.rate_limit
        wait = self.limiter.allow(key.name, rate, key.burst or self.settings.burst)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            raise HttpError(429, f"rate limit of {rate:g} requests/s exceeded", {"Retry-After": retry})
        return key

    def charge(self, key: ApiKey, images: int) -> None:
        """Count images against the key's quota; :class:`HttpError` 429 when it would pass it."""
        quota = key.quota if key.quota is not None else self.settings.quota
        if not self.usage.charge(key.name, images, quota):
            raise HttpError(429, f"quota of {quota} images used up for key {key.name!r}")

    # -- synchronous reconstruction -----------------------------------------------------------------
    def submit_image(
        self, data: bytes, source: str, *, texture: bool = False, keep_image: bool = False
    ) -> Any:
        """Queue one image on the next batcher (round robin over devices); returns a Future of a
        :class:`Reply`. :class:`HttpError` 422 for bytes that are no image (or a decompression bomb),
        503 while warming up or shutting down."""
        check_image_bytes(data, source, self.settings.max_pixels)
        with self._lock:
            live = [b for b in self.batchers if b.ready.is_set() and b.error is None]
            if not live:
                raise HttpError(
                    503,
                    "the service is warming up its networks or shutting down: retry soon",
                    {"Retry-After": "2"},
                )
            b = live[self._next % len(live)]
            self._next += 1
        try:
            return b.submit(data, source, texture=texture, keep_image=keep_image)
        except BatcherClosed as e:
            raise HttpError(503, str(e)) from None

    def reconstruct(
        self, data: bytes, source: str, *, texture: bool = False, keep_image: bool = False
    ) -> Reply:
        """:meth:`submit_image` and wait (for callers on threads: the UI, tests)."""
        reply: Reply = self.submit_image(data, source, texture=texture, keep_image=keep_image).result()
        self.count_reply(reply)
        return reply

    def count_reply(self, reply: Reply) -> None:
        r = reply.result
        self.metrics.count("sync", 1, len(r.faces), 1 if r.error else 0)

    # -- jobs ------------------------------------------------------------------------------------------
    def submit_job(
        self,
        key: ApiKey,
        kind: str,
        inputs: Sequence[str],
        options: dict[str, Any],
        *,
        job_id: str | None = None,
    ) -> JobRecord:
        """Start a job over ``inputs``: paths under ``[service] roots`` (checked here: 403 outside them),
        or the job's own upload folder (``job_id`` from :meth:`JobManager.new_folder`)."""
        if kind not in JOB_KINDS:
            raise HttpError(422, f"kind must be one of {', '.join(JOB_KINDS)}, got {kind!r}")
        self._check_quota(key)
        options = self._check_options(kind, options)
        if job_id is None:
            if not inputs:
                raise HttpError(422, "a job needs files (upload them) or an input path")
            inputs = [confine(str(p), self.settings.roots) for p in inputs]
            job_id, _ = self.jobs.new_folder()
        return self.jobs.create(job_id, key.name, kind, list(inputs), options)

    def _check_quota(self, key: ApiKey) -> None:
        quota = key.quota if key.quota is not None else self.settings.quota
        if quota and self.usage.used(key.name) >= quota:
            raise HttpError(429, f"quota of {quota} images used up for key {key.name!r}")

    def _check_options(self, kind: str, options: dict[str, Any]) -> dict[str, Any]:
        from facefleet.config import FORMATS
        from facefleet.config.sections import VIDEO_FORMATS

        allowed = VIDEO_FORMATS if kind == "video" else FORMATS
        formats = options.get("formats") or []
        if isinstance(formats, str):
            formats = [f.strip() for f in formats.split(",") if f.strip()]
        bad = [f for f in formats if f not in allowed]
        if bad or not isinstance(formats, list):
            raise HttpError(422, f"formats of a {kind} job are among {', '.join(allowed)}; got {formats!r}")
        unknown = set(options) - {"formats"}
        if unknown:
            raise HttpError(422, f"unknown job options: {', '.join(sorted(unknown))} (known: formats)")
        return {"formats": formats}

    def get_job(self, key: ApiKey, job_id: str) -> JobRecord:
        """The job, if ``key`` owns it (another key's job is 404: ids are not secrets to confirm)."""
        record = self.store.get(job_id)
        if record is None or (self.settings.auth and record.key != key.name):
            raise HttpError(404, f"no job {job_id!r}")
        return record

    def job_file(self, key: ApiKey, job_id: str, rel: str) -> Path:
        """A file of a job's outputs (403 for a path out of them, 404 for none)."""
        record = self.get_job(key, job_id)
        out = Path(record.out).resolve()
        path = (out / rel).resolve()
        if out not in path.parents:
            raise HttpError(403, f"{rel}: outside the job's outputs")
        if not path.is_file():
            raise HttpError(404, f"{rel}: no such file in job {job_id}")
        return path

    def job_queue(self, record: JobRecord) -> str | None:
        """The job's networked queue URL without its password (None with the SQLite default)."""
        from facefleet.engine.queue import is_networked, public_url

        url = self.jobs.job_config(record).queue.url
        return public_url(url) if url and is_networked(url) else None

    def output_files(self, record: JobRecord) -> list[Path]:
        """A job's output files, in path order: everything under its OUT but the queue and other
        internal files (names starting with ``_`` or ``.``, at any depth)."""
        out = Path(record.out)
        if not out.is_dir():
            return []
        files = []
        for p in sorted(out.rglob("*")):
            rel = p.relative_to(out).as_posix()
            if p.is_file() and not rel.startswith(("_", ".")) and "/_" not in rel and "/." not in rel:
                files.append(p)
        return files

    def queue_depths(self) -> dict[str, int]:
        left = 0
        for r in self.store.list(states=("running",)):
            if r.total is not None:
                left += max(0, r.total - r.done)
        return {"sync": sum(b.depth() for b in self.batchers), "jobs": left}

    def _job_done(self, record: JobRecord) -> None:
        self.metrics.jobs_done.labels(record.state).inc()
        if record.kind == "video":  # frames are counted as chunks are done; failed videos at the end
            self.metrics.count("jobs", 0, 0, record.failed)
        if record.state == "completed" and record.images:
            self.usage.charge(record.key, record.images, 0)  # counted, never refused after the work


def _lock_data_dir(data_dir: Path) -> Any:
    """An exclusive lock on the data folder for the server's life: a second server on it would resume
    the same jobs (the kernel drops the lock however the server ends)."""
    from facefleet.engine.layout import EngineError, RunLock

    try:
        return RunLock(data_dir).acquire()
    except EngineError:
        raise ValueError(
            f"another facefleet serve is using {data_dir}: stop it first, or use another --data-dir"
        ) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _gpu_probe() -> Any:
    from facefleet.monitor.gpu import NvmlProbe

    probe = NvmlProbe()
    return probe.read if probe.available else None
