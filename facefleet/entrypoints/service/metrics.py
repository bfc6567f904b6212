"""``/metrics`` in Prometheus' text format (prometheus-client), one registry per service.

Counted in the server process, from what it sees: every HTTP request (latency histograms by route,
method and status), every batch of ``/v1/reconstruct`` (size, seconds), and the engine's events of
every job (units done by worker processes reach the server through the job's coordinator), so the
totals are right however many worker processes and GPUs a job uses. Read at scrape time: jobs by
state (the store), queue depths, images and faces per second over the last 10 s, and each GPU's
utilisation and memory through NVML.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from facefleet.engine import events as ev

LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATE_WINDOW_S = 10.0


class _Rate:
    """Events per second over the last ``RATE_WINDOW_S`` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marks: deque[tuple[float, int]] = deque()

    def add(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._marks.append((now, n))
            self._trim(now)

    def per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._marks) / RATE_WINDOW_S

    def _trim(self, now: float) -> None:
        while self._marks and self._marks[0][0] < now - RATE_WINDOW_S:
            self._marks.popleft()


class ServiceMetrics:
    """The service's metrics. ``jobs_by_state``, ``queue_depths`` and ``gpus`` are read at scrape."""

    def __init__(
        self,
        jobs_by_state: Callable[[], dict[str, int]],
        queue_depths: Callable[[], dict[str, int]],
        gpus: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Histogram(
            "facefleet_http_request_duration_seconds",
            "HTTP request latency, handler to last byte",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "facefleet_batch_size",
            "images per GPU/CPU batch of POST /v1/reconstruct",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "facefleet_batch_seconds",
            "decode + reconstruct time of one batch of POST /v1/reconstruct",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("facefleet_images", "images processed", ["source"], registry=r)
        self.faces = Counter("facefleet_faces", "faces found", ["source"], registry=r)
        self.failed = Counter(
            "facefleet_failed_images", "images that could not be processed", ["source"], registry=r
        )
        self.jobs_done = Counter(
            "facefleet_jobs_finished", "jobs that ended, by final state", ["state"], registry=r
        )
        self.worker_events = Counter(
            "facefleet_worker_events", "job worker processes started and stopped", ["event"], registry=r
        )
        self._image_rate = _Rate()
        self._face_rate = _Rate()
        r.register(_Scraped(self, jobs_by_state, queue_depths, gpus))

    # -- what the service tells it ---------------------------------------------------------------
    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def count(self, source: str, images: int, faces: int, failed: int = 0) -> None:
        self.images.labels(source).inc(images)
        self.faces.labels(source).inc(faces)
        if failed:
            self.failed.labels(source).inc(failed)
        self._image_rate.add(images)
        self._face_rate.add(faces)

    def on_job_event(self, e: ev.Event) -> None:
        """Engine events of every job: units done by any worker process, workers up and down."""
        if isinstance(e, ev.UnitDone) and e.state in ("done", "failed"):
            self.count("jobs", e.images, e.faces, e.failed)
        elif isinstance(e, ev.WorkerUp):
            self.worker_events.labels("up").inc()
        elif isinstance(e, ev.WorkerDown):
            self.worker_events.labels("down").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Scraped(Collector):
    """Gauges computed when Prometheus scrapes."""

    def __init__(
        self,
        m: ServiceMetrics,
        jobs_by_state: Callable[[], dict[str, int]],
        queue_depths: Callable[[], dict[str, int]],
        gpus: Callable[[], list[dict[str, Any]]] | None,
    ) -> None:
        self.m = m
        self.jobs_by_state = jobs_by_state
        self.queue_depths = queue_depths
        self.gpus = gpus

    def describe(self) -> list[Any]:
        return []  # computed at scrape: nothing to check for name clashes up front

    def collect(self) -> Iterator[Any]:
        from facefleet.entrypoints.service.store import ACTIVE, FINAL

        jobs = GaugeMetricFamily("facefleet_jobs", "jobs by state", labels=["state"])
        counts = self.jobs_by_state()
        for state in (*ACTIVE, *FINAL):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        depth = GaugeMetricFamily(
            "facefleet_queue_depth",
            "work waiting: requests for a batch (sync), images of running jobs (jobs)",
            labels=["queue"],
        )
        for name, n in self.queue_depths().items():
            depth.add_metric([name], n)
        yield depth
        yield GaugeMetricFamily(
            "facefleet_images_per_second",
            f"images processed per second over the last {RATE_WINDOW_S:.0f} s",
            value=self.m._image_rate.per_second(),
        )
        yield GaugeMetricFamily(
            "facefleet_faces_per_second",
            f"faces found per second over the last {RATE_WINDOW_S:.0f} s",
            value=self.m._face_rate.per_second(),
        )
        if self.gpus is None:
            return
        util = GaugeMetricFamily(
            "facefleet_gpu_utilization_percent", "GPU utilisation (NVML)", labels=["gpu", "name"]
        )
        used = GaugeMetricFamily(
            "facefleet_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu", "name"]
        )
        total = GaugeMetricFamily(
            "facefleet_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["gpu", "name"]
        )
        for g in self.gpus():
            labels = [str(g["index"]), str(g["name"])]
            if g.get("util") is not None:
                util.add_metric(labels, float(g["util"]))
            if g.get("mem_used_mib") is not None:
                used.add_metric(labels, float(g["mem_used_mib"]) * 2**20)
            if g.get("mem_total_mib") is not None:
                total.add_metric(labels, float(g["mem_total_mib"]) * 2**20)
        yield from (util, used, total)
