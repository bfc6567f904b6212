"""The coordinator of a batch run: lists the input into units, starts and supervises workers,
reaps poison units, shows progress, and writes ``OUT/stats.json`` (and the report) at the end.

Layout of OUT::

    run.json                 the run's configuration (a resume must use the same INPUT)
    _queue.sqlite            the durable work queue (+ -wal/-shm)
    manifest/unit-<id>.parquet
    files/<input tree>/<name>.<ext>.{json,obj,glb,...}
    stats.json, report.json, report.html
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from facefleet.engine.executor import Executor, WorkerHandle, make_executor
from facefleet.engine.manifest import MANIFEST_DIR, unit_path
from facefleet.engine.queue import QUEUE_FILE, enqueue_listing, open_queue
from facefleet.engine.worker import BATCH_STAGES, EXIT_OUTPUT, WorkerSpec, error_kind, owner_id
from facefleet.hardware import (
    DeviceProfile,
    check_model_settings,
    cpu_count,
    describe_devices,
    load_config,
    plan_devices,
)

RUN_FILE = "run.json"
STATS_FILE = "stats.json"

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class EngineError(Exception):
    """A run cannot start or go on (missing INPUT, unwritable OUT, disk full...): one line."""


@dataclass
class RunSummary:
    """What a run did (totals over the whole run, previous sessions of a resumed run included)."""

    out_dir: Path
    images: int = 0
    faces: int = 0
    no_face: int = 0
    failed: int = 0
    units_done: int = 0
    units_failed: int = 0
    units_skipped: int = 0  # already done before this session
    seconds: float = 0.0
    interrupted: bool = False
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    stats_path: Path | None = None

    @property
    def complete(self) -> bool:
        return not self.interrupted

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.failed else EXIT_OK


def input_identity(spec: str | os.PathLike[str] | Sequence[str]) -> Any:
    """How run.json records INPUT: local paths made absolute, URLs as written."""
    if isinstance(spec, (list, tuple)):
        return [input_identity(s) for s in spec]
    s = os.fspath(spec)  # type: ignore[arg-type]
    return s if "://" in s else os.path.abspath(os.path.expanduser(s))


def input_root(spec: Any) -> str | None:
    """The directory that per-image outputs mirror: the input directory, or a glob's fixed prefix."""
    if isinstance(spec, (list, tuple)) or "://" in str(spec):
        return None
    p = os.path.abspath(os.path.expanduser(str(spec)))
    if os.path.isdir(p):
        return p
    if any(c in p for c in "*?["):
        parts = []
        for part in Path(p).parts:
            if any(c in part for c in "*?["):
                break
            parts.append(part)
        return str(Path(*parts)) if parts else None
    return None  # a list file or a single image: sanitised absolute paths


# -- the run -----------------------------------------------------------------------------------
def run(
    input_spec: str | os.PathLike[str] | Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    devices: str = "auto",
    formats: Iterable[str] = (),
    batch_size: int | None = None,
    precision: str | None = None,
    unit_size: int | None = None,
    workers: int | None = None,
    gpu_workers: int | None = None,
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    force: bool = False,
    quiet: bool = False,
    log_json: str | os.PathLike[str] | None = None,
    lease_seconds: float | None = None,
    max_attempts: int | None = None,
    max_restarts: int | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    texture_size: int = 512,
    reconstructor: str | None = None,
    reconstructor_kwargs: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    executor: str | Executor | None = None,
    report: bool = True,
    progress_stream: TextIO | None = None,
) -> RunSummary:
    """Reconstruct every image of ``input_spec`` into ``out_dir`` with every device asked for.

    Resumes a previous run into the same ``out_dir`` (``force=True`` starts over). Returns the
    run's :class:`RunSummary`; raises :class:`EngineError` for problems that stop the run.
    ``reconstructor`` ("module:callable") replaces :class:`facefleet.pipeline.Reconstructor`.
    ``model``: pipeline settings (detector, refine, max_faces, min_score, min_presence) over the
    config file's ``[model]``; ``reconstructor_kwargs`` (any argument of the pipeline) over both.
    """
    cfg = dict(config) if isinstance(config, Mapping) else load_config(config)
    run_cfg = dict(cfg.get("run", {}))
    unit_size = int(unit_size or run_cfg.get("unit_size", 256))
    lease = float(lease_seconds or run_cfg.get("lease_seconds", 30.0))
    attempts = int(max_attempts or run_cfg.get("max_attempts", 3))
    fmts = tuple(sorted({f.strip().lower() for f in formats if f.strip()}))
    model_cfg = {**cfg.get("model", {}), **dict(model or {})}
    try:
        check_model_settings(model_cfg, "model settings")
    except ValueError as e:
        raise EngineError(str(e)) from None
    rec_kwargs = {**model_cfg, **dict(reconstructor_kwargs or {})}
    out = Path(out_dir)
    identity = input_identity(input_spec)

    try:
        profiles = plan_devices(
            devices,
            config=cfg,
            batch_size=batch_size,
            precision=precision,
            cpu_workers=workers,
            gpu_workers=gpu_workers,
        )
    except ValueError as e:
        raise EngineError(str(e)) from None

    config_record = {
        "input": identity,
        "output": str(out.resolve()),
        "unit_size": unit_size,
        "formats": list(fmts),
        "devices": devices,
        "batch_size": batch_size,
        "precision": precision,
        "workers": len(profiles),
        "lease_seconds": lease,
        "max_attempts": attempts,
        "texture_size": texture_size,
        "model": model_cfg,
        "model_dir": str(model_dir) if model_dir else None,
        "config_file": None if isinstance(config, Mapping) or config is None else str(config),
        "executor": executor if isinstance(executor, str) or executor is None else executor.name,
        "profiles": [p.to_dict() for p in profiles],
    }
    listing = open_listing(input_spec)  # a missing or empty INPUT fails here, before OUT is touched
    _prepare_out(out, identity, unit_size, force, config_record)

    ex = executor if isinstance(executor, Executor) else make_executor(executor or run_cfg.get("executor"))
    coord = _Coordinator(
        input_spec=input_spec,
        listing=listing,
        out=out,
        profiles=profiles,
        unit_size=unit_size,
        lease=lease,
        attempts=attempts,
        max_restarts=max_restarts if max_restarts is not None else 2 * len(profiles) + 2,
        spec_kwargs={
            "formats": fmts,
            "input_root": input_root(input_spec),
            "lease_seconds": lease,
            "max_attempts": attempts,
            "model_dir": str(model_dir) if model_dir else None,
            "texture_size": texture_size,
            "reconstructor": reconstructor,
            "reconstructor_kwargs": rec_kwargs,
            "coordinator_pid": os.getpid(),
            "stage_timings": bool(run_cfg.get("stage_timings", True)),
            # per-image files in processes (default: on GPU workers when meshes, textures or overlays are
            # asked for) or threads
            "file_processes": _optional_bool(run_cfg.get("file_processes"), "[run] file_processes"),
            # per-image files (PNG/OBJ encoding) need CPU: share the host's cores among workers
            "writers": int(
                run_cfg.get("writers", max(2, min(16, cpu_count() // max(1, len(profiles)) // 2)))
            ),
        },
        executor=ex,
        quiet=quiet,
        log_json=Path(log_json) if log_json else None,
        config_record=config_record,
        report=report,
        stream=progress_stream or sys.stderr,
    )
    return coord.run()


def _optional_bool(value: Any, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise EngineError(f"{where} must be true or false, got {value!r}")
    return value


def worker_names(profiles: Sequence[DeviceProfile]) -> list[str]:
    """One name per worker: cpu0, cpu1, ...; gpuN for the (first) worker of GPU N, gpuN.K for its
    K-th further worker when a GPU runs several."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(profiles):
        if p.device == "cpu":
            names.append(f"cpu{i}")
            continue
        k = seen.get(p.device, 0)
        seen[p.device] = k + 1
        base = p.device.replace("cuda:", "gpu")
        names.append(base if k == 0 else f"{base}.{k}")
    return names


def open_listing(spec: Any) -> tuple[list[str], Iterator[str]]:
    """Start the listing and read its first path now, so a missing INPUT fails at once."""
    from facefleet.io.discover import iter_inputs

    it = iter_inputs(list(spec) if isinstance(spec, (list, tuple)) else spec)
    try:
        first = next(it)
    except StopIteration:
        raise EngineError(f"no image files found in {_spec_text(spec)}") from None
    except (OSError, ValueError) as e:
        raise _as_engine_error(e, spec) from None
    return [first], it


def _prepare_out(out: Path, identity: Any, unit_size: int, force: bool, record: dict[str, Any]) -> None:
    """Create/check OUT, clear it on ``force``, refuse to mix two different inputs."""
    from facefleet.io.atomic import atomic_write_text

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngineError(f"cannot create output directory {out}: {e.strerror or e}") from None
    if not out.is_dir():
        raise EngineError(f"output {out} exists and is not a directory")
    run_file = out / RUN_FILE
    if force:
        for name in (
            QUEUE_FILE,
            QUEUE_FILE + "-wal",
            QUEUE_FILE + "-shm",
            "stats.json",
            "report.json",
            "report.html",
        ):
            (out / name).unlink(missing_ok=True)
        for d in (MANIFEST_DIR, "files"):
            shutil.rmtree(out / d, ignore_errors=True)
    elif run_file.exists():
        try:
            old = json.loads(run_file.read_text())
        except (OSError, ValueError) as e:
            raise EngineError(f"{run_file} is unreadable ({e}); use --force to start over") from None
        if old.get("input") != identity:
            raise EngineError(
                f"{out} holds a run of a different INPUT ({old.get('input')}); "
                "use --force to start over, or choose another output directory"
            )
        if int(old.get("unit_size", unit_size)) != unit_size:
            raise EngineError(
                f"{out} was made with --unit-size {old.get('unit_size')} (asked: {unit_size}); "
                "use the same unit size to resume, or --force to start over"
            )
        if old.get("model", {}) != record.get("model", {}):  # one manifest, one set of pipeline settings
            raise EngineError(
                f"{out} was made with pipeline settings {old.get('model', {})} (asked: "
                f"{record.get('model')}); use the same settings to resume, or --force to start over"
            )
    elif (out / QUEUE_FILE).exists():
        raise EngineError(f"{out} has a work queue but no {RUN_FILE}; use --force to start over")
    try:
        record = dict(record, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if run_file.exists() and not force:
            record["created"] = json.loads(run_file.read_text()).get("created", record["created"])
        atomic_write_text(run_file, json.dumps(record, indent=2))
    except OSError as e:
        raise EngineError(f"cannot write to output directory {out}: {e.strerror or e}") from None


class _Coordinator:
    def __init__(
        self,
        *,
        input_spec: Any,
        listing: tuple[list[str], Iterator[str]],
        out: Path,
        profiles: list[DeviceProfile],
        unit_size: int,
        lease: float,
        attempts: int,
        max_restarts: int,
        spec_kwargs: dict[str, Any],
        executor: Executor,
        quiet: bool,
        log_json: Path | None,
        config_record: dict[str, Any],
        report: bool,
        stream: TextIO,
    ) -> None:
        self.input_spec = input_spec
        self.listing = listing
        self.out = out
        self.profiles = profiles
        self.unit_size = unit_size
        self.lease = lease
        self.attempts = attempts
        self.max_restarts = max_restarts
        self.spec_kwargs = spec_kwargs
        self.executor = executor
        self.quiet = quiet
        self.config_record = config_record
        self.report = report
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.log: TextIO | None = None
        if log_json is not None:
            try:
                log_json.parent.mkdir(parents=True, exist_ok=True)
                self.log = log_json.open("a", encoding="utf-8")
            except OSError as e:
                raise EngineError(f"cannot open --log-json {log_json}: {e.strerror or e}") from None
        self.q = open_queue(out / QUEUE_FILE)
        self.handles: dict[str, WorkerHandle] = {}
        self.restarts = 0
        self.drain_requests = 0
        self.list_error: BaseException | None = None
        self.fatal: str | None = None
        self.throughput: list[dict[str, float]] = []
        self.batch_seconds: list[float] = []
        # [seconds since the start, images, worker] per batch, all workers
        self.batch_done: list[list[Any]] = []
        self.batch_stages: list[list[float]] = []  # per batch, all workers: BATCH_STAGES (t since the start)
        self.last_event = 0
        self.t0 = time.time()
        self._rates: dict[str, tuple[float, int]] = {}
        self._last_line = 0.0

    # -- main ------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        q = self.q
        start_counts = q.counts()
        units_skipped = start_counts["done"]["units"] + start_counts["failed"]["units"]
        done_images_before = start_counts["done"]["images"] + start_counts["failed"]["images"]
        q.set_meta("drain", "0")
        self.last_event = q.last_event_id()
        self._emit("run_started", {"config": self.config_record, "units_done_before": units_skipped})

        listing_needed = q.get_meta("listing_done") != "1"
        lister = None
        if listing_needed:
            first, paths = self.listing
            lister = threading.Thread(target=self._list, args=(first, paths), name="lister", daemon=True)
            lister.start()

        sampler = self._start_sampler()
        old_handler = self._install_sigint()
        interrupted = False
        try:
            if q.remaining() > 0 or listing_needed:
                for name, prof in zip(worker_names(self.profiles), self.profiles):
                    self._start_worker(name, prof)
            tick = 0.0
            while True:
                now = time.time()
                self._drain_events()
                self._reap_dead()
                self._reap_poison()
                if now - tick >= 1.0:
                    tick = now
                    self._sample(now)
                self._progress(now, done_images_before)
                if self.fatal:
                    self._request_drain()
                listing_over = lister is None or not lister.is_alive()
                if self.list_error is not None and not self.drain_requests:
                    self._request_drain()
                alive = [h for h in self.handles.values() if h.exitcode is None]
                if not alive:
                    if self.drain_requests or self.fatal or (listing_over and q.remaining() == 0):
                        break
                    if listing_over and self.restarts >= self.max_restarts:
                        self.fatal = "every worker died and the restart budget is used up"
                        break
                time.sleep(0.2)
            interrupted = bool(self.drain_requests) and not (
                q.get_meta("listing_done") == "1" and q.remaining() == 0
            )
        finally:
            self._restore_sigint(old_handler)
            for h in self.handles.values():
                if h.exitcode is None:
                    h.kill()
                h.join(5)
            self.executor.close()
            self._drain_events()
            self._reap_poison()
            if sampler is not None:
                sampler.stop()
            if self.tty and not self.quiet:
                self.stream.write("\n")
        self._sample(time.time())
        summary = self._finish(sampler, units_skipped, interrupted)
        if self.list_error is not None:
            raise _as_engine_error(self.list_error, self.input_spec)
        if self.fatal:
            raise EngineError(self.fatal)
        return summary

    # -- listing ---------------------------------------------------------------------------
    def _list(self, first: list[str], rest: Iterator[str]) -> None:
        """Lister thread: streams the listing into units (one unit in memory at a time)."""
        q = open_queue(self.out / QUEUE_FILE)

        def paths() -> Iterator[str]:
            yield from first
            yield from rest

        try:
            enqueue_listing(q, paths(), self.unit_size, stop=lambda: bool(self.drain_requests))
        except BaseException as e:
            self.list_error = e
        finally:
            q.close()

    # -- workers ---------------------------------------------------------------------------
    def _start_worker(self, name: str, prof: DeviceProfile) -> None:
        spec = WorkerSpec(name=name, out_dir=str(self.out), profile=prof, **self.spec_kwargs)
        self.handles[name] = self.executor.start(spec)

    def _reap_dead(self) -> None:
        q = self.q
        for name, h in list(self.handles.items()):
            code = h.exitcode
            if code is None or getattr(h, "_reaped", False):
                continue
            h._reaped = True  # type: ignore[attr-defined]
            owner = owner_id(name, h.pid or 0)
            if code == 0:
                self._emit("worker_exited", {"worker": name, "pid": h.pid})
            else:
                released = q.release_owner(owner, f"worker {name} died (exit code {code})")
                self._emit(
                    "worker_died",
                    {"worker": name, "pid": h.pid, "exit_code": code, "units_released": released},
                )
            if self.drain_requests:  # interrupted (a Ctrl-C also reaches workers still starting up)
                continue
            if code != 0 and not any(w["owner"] == owner for w in q.workers()):
                # died before registering: it could not build its pipeline; restarting will not help
                self.fatal = self.fatal or (
                    f"worker {name} ({h.spec.profile.device}) failed to start (exit code {code}); "
                    "see its error above"
                )
                continue
            if code == EXIT_OUTPUT:
                self.fatal = (
                    f"cannot write to {self.out} (disk full or not writable); see the worker's message above"
                )
                continue
            if self.drain_requests or self.fatal:
                continue
            if q.remaining() == 0 and q.get_meta("listing_done") == "1":
                continue
            if self.restarts >= self.max_restarts:
                self._say(f"worker {name} died (exit code {code}); restart budget used up")
                continue
            self.restarts += 1
            if code == 0:  # left early although work remains (should not happen): start it again
                self._start_worker(name, h.spec.profile)
                continue
            self._say(
                f"worker {name} died (exit code {code}); restarting it ({self.restarts}/{self.max_restarts})"
            )
            self._start_worker(name, h.spec.profile)
            self._emit("worker_restarted", {"worker": name, "pid": self.handles[name].pid})

    def _reap_poison(self) -> None:
        """Units that used up their attempts: every image gets an error row, the unit is failed."""
        from facefleet.engine.manifest import write_unit
        from facefleet.types import ImageResult

        for unit in self.q.poisoned(self.attempts):
            reason = self.q.last_error(unit.id) or "worker failed"
            text = f"unit failed after {unit.attempts} attempts: {reason}"
            results = [ImageResult(p, 0, 0, error=text) for p in unit.paths]
            try:
                write_unit(self.out, unit.id, results)
            except OSError as e:
                self.fatal = f"cannot write {unit_path(self.out, unit.id)}: {e.strerror or e}"
                return
            stats = {
                "worker": None,
                "images": len(results),
                "faces": 0,
                "no_face": 0,
                "failed": len(results),
                "failed_by_reason": {error_kind(text): len(results)},
                "failures": [{"source": unit.paths[0], "reason": error_kind(text), "error": text}],
                "stages": {},
            }
            self.q.fail(unit.id, text, stats)

    # -- signals ---------------------------------------------------------------------------
    def _install_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            self.drain_requests += 1
            if self.drain_requests == 1:
                self._say("interrupted: finishing the units in progress (Ctrl-C again to stop now)")
                self._request_drain()
            else:
                self._say("stopping now; unfinished units will be redone by the next run")
                for h in self.handles.values():
                    h.kill()

        old = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, handler)
        return old

    def _restore_sigint(self, old: Any) -> None:
        if old is not None:
            signal.signal(signal.SIGINT, old)

    def _request_drain(self) -> None:
        with contextlib.suppress(Exception):
            self.q.set_meta("drain", "1")

    # -- events, progress, stats -----------------------------------------------------------
    def _emit(self, kind: str, data: dict[str, Any], t: float | None = None) -> None:
        if self.log is None:
            return
        rec = {"t": round(t if t is not None else time.time(), 4), "event": kind, **data}
        try:
            self.log.write(json.dumps(rec, default=str) + "\n")
            self.log.flush()
        except OSError:
            pass

    def _drain_events(self) -> None:
        for eid, t, kind, data in self.q.events_after(self.last_event):
            self.last_event = eid
            if kind == "unit_done":
                self.batch_seconds.extend(data.get("batch_seconds", []))
                if len(self.batch_seconds) > 100_000:
                    self.batch_seconds = self.batch_seconds[::2]
                if len(self.batch_done) < 200_000:  # a million images are ~8,000 batches
                    w = str(data.get("worker", ""))
                    rows = data.get("batch_done", [])
                    self.batch_done.extend([round(t - self.t0, 4), n, w] for t, n in rows)
                if len(self.batch_stages) < 200_000:
                    self.batch_stages.extend(
                        [round(r[0] - self.t0, 4), *r[1:]] for r in data.get("batch_stages", [])
                    )
            if self.log is not None:
                drop = ("batch_seconds", "batch_done", "batch_stages")
                data = {k: v for k, v in data.items() if k not in drop}
                self._emit(kind, data, t)

    def _sample(self, now: float) -> None:
        ws = self.q.workers()
        rec = {
            "t": round(now - self.t0, 3),
            "images": sum(w["images"] for w in ws if w["started"] >= self.t0 - 1),
            "faces": sum(w["faces"] for w in ws if w["started"] >= self.t0 - 1),
        }
        self.throughput.append(rec)
        if len(self.throughput) > 20_000:
            self.throughput = self.throughput[::2]

    def _progress(self, now: float, done_before: int) -> None:
        if self.quiet or (now - self._last_line < (0.5 if self.tty else 30.0)):
            return
        self._last_line = now
        ws = [w for w in self.q.workers() if w["started"] >= self.t0 - 1]
        images = sum(w["images"] for w in ws)
        faces = sum(w["faces"] for w in ws)
        failed = sum(w["failed"] for w in ws)
        dt = max(now - self.t0, 1e-6)
        total_s = self.q.get_meta("listed_images")
        total = int(total_s) if total_s else None
        listing_done = self.q.get_meta("listing_done") == "1"
        done = done_before + images
        parts = []
        if total and listing_done:
            parts.append(f"{done}/{total} images {100.0 * done / max(total, 1):.0f}%")
        else:
            parts.append(f"{done} images" + (f" (listed {total}...)" if total else ""))
        rate = images / dt
        parts.append(f"{rate:.1f} img/s {faces / dt:.1f} faces/s")
        if total and listing_done and rate > 0:
            parts.append(f"ETA {_hms(max(0, total - done) / rate)}")
        if failed:
            parts.append(f"{failed} failed")
        per = []
        by_name: dict[str, int] = {}
        for w in ws:  # per GPU: gpu0 and gpu0.1 (two workers of GPU 0) add up
            key = str(w["name"]).split(".", 1)[0]
            by_name[key] = by_name.get(key, 0) + w["images"]
        for name, n in sorted(by_name.items()):
            t_prev, n_prev = self._rates.get(name, (self.t0, 0))
            r = (n - n_prev) / max(now - t_prev, 1e-6)
            if now - t_prev >= 2.0:
                self._rates[name] = (now, n)
            per.append(f"{name} {r:.0f}/s")
        line = " | ".join(parts) + ("  [" + " ".join(per) + "]" if per else "")
        if self.tty:
            cols = shutil.get_terminal_size((120, 20)).columns
            self.stream.write("\r\x1b[K" + line[: cols - 1])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _say(self, msg: str) -> None:
        if self.quiet:
            return
        self.stream.write(("\r\x1b[K" if self.tty else "") + f"facefleet: {msg}\n")
        self.stream.flush()

    def _start_sampler(self) -> Any:
        try:
            from facefleet.monitor.gpu import GpuSampler
        except Exception:
            return None
        gpus = [int(p.device.split(":")[1]) for p in self.profiles if p.device.startswith("cuda:")]
        try:
            return GpuSampler(1.0, gpus=gpus or None, pid=os.getpid()).start()
        except Exception:
            return None

    def _finish(self, sampler: Any, units_skipped: int, interrupted: bool) -> RunSummary:
        from facefleet.io.atomic import atomic_write_text

        q = self.q
        wall = time.time() - self.t0
        totals = {"images": 0, "faces": 0, "no_face": 0, "failed": 0}
        by_reason: dict[str, int] = {}
        stages: dict[str, float] = {}
        failures: list[dict[str, Any]] = []
        per_worker: dict[str, dict[str, Any]] = {}
        peak: dict[str, float] = {}
        worker_peak: dict[tuple[str, str], float] = {}
        units_done = units_failed = 0
        for _uid, state, st in q.unit_stats():
            if state == "done":
                units_done += 1
            else:
                units_failed += 1
            for k in totals:
                totals[k] += int(st.get(k, 0))
            for k, v in st.get("failed_by_reason", {}).items():
                by_reason[k] = by_reason.get(k, 0) + int(v)
            for k, v in st.get("stages", {}).items():
                stages[k] = stages.get(k, 0.0) + float(v)
            for f in st.get("failures", []):
                if sum(x["reason"] == f["reason"] for x in failures) < 5:
                    failures.append(f)
            w = st.get("worker")
            if w:
                pw = per_worker.setdefault(
                    w,
                    {
                        "worker": w,
                        "device": st.get("device"),
                        "units": 0,
                        "images": 0,
                        "faces": 0,
                        "failed": 0,
                        "seconds": 0.0,
                        "busy_seconds": 0.0,
                    },
                )
                pw["units"] += 1
                for k in ("images", "faces", "failed"):
                    pw[k] += int(st.get(k, 0))
                pw["seconds"] += float(st.get("seconds", 0.0))
                pw["busy_seconds"] += float(st.get("busy_seconds", 0.0))
                if "gpu_memory_peak_mib" in st:
                    key = (str(st.get("device")), str(w))
                    worker_peak[key] = max(worker_peak.get(key, 0.0), float(st["gpu_memory_peak_mib"]))
        # several workers on one GPU: their peaks add up (an upper bound of the GPU's peak)
        for (dev, _w), v in worker_peak.items():
            peak[dev] = peak.get(dev, 0.0) + v
        names = dict(zip(worker_names(self.profiles), self.profiles))
        for w, pw in per_worker.items():
            prof = names.get(w)
            if prof is not None:
                pw.update(name=prof.name, batch_size=prof.batch_size, precision=prof.precision)
            pw["images_per_s"] = pw["images"] / pw["busy_seconds"] if pw["busy_seconds"] else None
        counts = q.counts()
        status = (
            "interrupted" if interrupted else ("failed" if self.fatal or self.list_error else "completed")
        )
        try:
            devices = describe_devices()
        except Exception as e:  # never lose the stats for a device query
            devices = [{"error": str(e)}]
        stats: dict[str, Any] = {
            "version": _version(),
            "status": status,
            "input": self.config_record["input"],
            "output": str(self.out.resolve()),
            "started_at": self.t0,
            "finished_at": time.time(),
            "wall_seconds": round(wall, 3),
            "totals": {
                **totals,
                "units": units_done + units_failed,
                "units_done": units_done,
                "units_failed": units_failed,
                "units_pending": counts["pending"]["units"] + counts["leased"]["units"],
                "units_skipped": units_skipped,
                "images_listed": int(q.get_meta("listed_images") or 0),
                "failed_by_reason": by_reason,
            },
            "failures": failures,
            "workers": sorted(per_worker.values(), key=lambda w: str(w["worker"])),
            "worker_restarts": self.restarts,
            "stages": {k: round(v, 4) for k, v in stages.items()},
            "throughput": self.throughput,
            "batch_seconds": [round(b, 5) for b in self.batch_seconds],
            "batch_done": sorted(self.batch_done),
            "batch_stages": {"columns": list(BATCH_STAGES), "rows": sorted(self.batch_stages)},
            "gpu_memory_peak_mib": peak,
            "devices": devices,
            "config": self.config_record,
        }
        if sampler is not None:
            with contextlib.suppress(Exception):
                stats["gpu_samples"] = sampler.to_dict()
        stats_path = self.out / STATS_FILE
        try:
            atomic_write_text(stats_path, json.dumps(stats, indent=1, default=str))
        except OSError as e:
            raise EngineError(f"cannot write {stats_path}: {e.strerror or e}") from None
        if self.report:
            try:
                from facefleet.monitor.report import write_report
            except ImportError:
                write_report = None  # type: ignore[assignment]
            if write_report is not None:
                try:
                    write_report(self.out, stats)
                except Exception as e:
                    self._say(f"could not write the run report: {type(e).__name__}: {e}")
        summary = RunSummary(
            out_dir=self.out,
            images=totals["images"],
            faces=totals["faces"],
            no_face=totals["no_face"],
            failed=totals["failed"],
            units_done=units_done,
            units_failed=units_failed,
            units_skipped=units_skipped,
            seconds=wall,
            interrupted=interrupted,
            failed_by_reason=by_reason,
            stats_path=stats_path,
        )
        self._emit(
            "run_done",
            {
                "status": status,
                **totals,
                "seconds": round(wall, 3),
                "units_done": units_done,
                "units_failed": units_failed,
                "failed_by_reason": by_reason,
            },
        )
        if self.log is not None:
            self.log.close()
        q.close()
        return summary


def _as_engine_error(e: BaseException, spec: Any) -> EngineError:
    if isinstance(e, EngineError):
        return e
    if isinstance(e, FileNotFoundError):
        return EngineError(
            str(e)
            if str(e).startswith(("input not found", "no files"))
            else f"input not found: {_spec_text(spec)}"
        )
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return EngineError("no space left on device")
        return EngineError(f"cannot read input {_spec_text(spec)}: {e.strerror or e}")
    return EngineError(f"listing {_spec_text(spec)} failed: {type(e).__name__}: {e}")


def _spec_text(spec: Any) -> str:
    return ", ".join(map(str, spec)) if isinstance(spec, (list, tuple)) else str(spec)


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _version() -> str:
    try:
        from facefleet import __version__

        return __version__
    except Exception:
        return "unknown"
