"""The layout of a run's output folder OUT, its record ``run.json``, and the lock that allows one
run per OUT.

Layout of OUT::

    .lock                    held (fcntl.flock) by the run's coordinator while it runs
    run.json                 the run's settings, written once when the run is created
    _queue.sqlite            the durable work queue (+ -wal/-shm), unless the queue is elsewhere
    manifest/unit-<id>.parquet
    manifest-damaged/        manifest files a resume found damaged or foreign (moved aside)
    files/<input tree>/<name>.<ext>.{json,obj,glb,...}
    stats.json, report.json, report.html

``run.json`` is never rewritten by a resume: a resume checks that its settings match the record
(INPUT, pipeline settings, formats, unit size) and refuses with a message naming the option that
differs. Each session (start or resume) is recorded in the queue instead (see ``totals``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facefleet.config import ConfigError, JobConfig, ModelConfig, RunConfig, apply_mapping
from facefleet.config.loading import section_from_json, section_to_json
from facefleet.engine.manifest import MANIFEST_DIR
from facefleet.engine.queue import QUEUE_FILE, WorkQueue

RUN_FILE = "run.json"
STATS_FILE = "stats.json"
LOCK_FILE = ".lock"
DAMAGED_DIR = "manifest-damaged"
FILES_DIR = "files"


class EngineError(Exception):
    """A run cannot start or go on (missing INPUT, unwritable OUT, disk full...): one line."""


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


class RunLock:
    """An exclusive ``fcntl.flock`` on ``OUT/.lock`` for the life of a run.

    The kernel drops the lock when the holding process ends, however it ends (a crashed or killed
    coordinator never leaves OUT locked), and spawned workers do not inherit it.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise EngineError(
                f"cannot write to output directory {self.path.parent}: {e.strerror or e}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise EngineError(
                f"another run is using {self.path.parent}"
                + (f" ({holder})" if holder else "")
                + "; wait for it to end or stop it (Ctrl-C) first, or choose another output directory"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        except OSError:
            pass  # the lock is what counts; its note is for the message above
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngineError(f"cannot create output directory {out}: {e.strerror or e}") from None
    if not out.is_dir():
        raise EngineError(f"output {out} exists and is not a directory")


def clear_out(out: Path) -> None:
    """``--force``: remove what a previous run left (under the lock, so never during a live run)."""
    for name in (
        QUEUE_FILE,
        QUEUE_FILE + "-wal",
        QUEUE_FILE + "-shm",
        RUN_FILE,
        STATS_FILE,
        "report.json",
        "report.html",
    ):
        (out / name).unlink(missing_ok=True)
    for d in (MANIFEST_DIR, DAMAGED_DIR, FILES_DIR):
        shutil.rmtree(out / d, ignore_errors=True)


# run.json keys a resume must match, with the option that sets each (for the message)
_MUST_MATCH = (
    ("model", "pipeline settings (--detector, --refine, ...)"),
    ("formats", "--formats"),
    ("texture_size", "--texture-size"),
    ("family", "--family"),
)


def check_or_write_record(out: Path, record: dict[str, Any], *, unit_size_given: bool) -> dict[str, Any]:
    """A new run: write ``run.json``. A resume: check ``record`` against it (refusing with the
    option that differs) and return the stored record, unchanged on disk."""
    from facefleet.io.atomic import atomic_write_text

    run_file = out / RUN_FILE
    if not run_file.exists():
        if (out / QUEUE_FILE).exists():
            raise EngineError(f"{out} has a work queue but no {RUN_FILE}; use --force to start over")
        record = dict(record, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            atomic_write_text(run_file, json.dumps(record, indent=2))
        except OSError as e:
            raise EngineError(f"cannot write to output directory {out}: {e.strerror or e}") from None
        return record
    try:
        old = json.loads(run_file.read_text())
    except (OSError, ValueError) as e:
        raise EngineError(f"{run_file} is unreadable ({e}); use --force to start over") from None
    if old.get("input") != record["input"]:
        raise EngineError(
            f"{out} holds a run of a different INPUT ({old.get('input')}); "
            "use --force to start over, or choose another output directory"
        )
    if unit_size_given and int(old.get("unit_size", record["unit_size"])) != record["unit_size"]:
        raise EngineError(
            f"{out} was made with --unit-size {old.get('unit_size')} (asked: {record['unit_size']}); "
            "use the same unit size to resume, or --force to start over"
        )
    for key, option in _MUST_MATCH:
        a, b = old.get(key, _DEFAULTS.get(key)), record.get(key, _DEFAULTS.get(key))
        if key == "formats":
            a, b = sorted(a or []), sorted(b or [])
        if key == "model":  # settings left at their defaults match the defaults written out
            a, b = _model_values(a), _model_values(b)
        if a != b:
            hint = ""
            if key == "formats":
                hint = (
                    " (the images already done would lack the other formats' files: run a new OUT for them)"
                )
            raise EngineError(
                f"{out} was made with {option} = {_show(a)} (asked: {_show(b)}){hint}; "
                "resume with the same settings, or use --force to start over"
            )
    return dict(old)


_DEFAULTS: dict[str, Any] = {"model": {}, "formats": [], "texture_size": 512, "family": None}


def _model_values(model: Any) -> Any:
    """A record's ``model`` with every setting (defaults filled in), to compare; as it is when it
    is not valid ``[model]`` settings (a record of another facefleet: then it must match as is)."""
    try:
        return changed_settings(section_from_json("model", model or {}, RUN_FILE))
    except ConfigError:
        return model


def changed_settings(section: Any) -> dict[str, Any]:
    """The settings of a config section that differ from its defaults, as JSON values (run.json's
    ``model``: what a user reads there is what the run set)."""
    default = section_to_json(type(section)())
    return {k: v for k, v in section_to_json(section).items() if v != default[k]}


# -- the run's settings, as every worker of every host takes them ------------------------------
#: the form of run.json's ``settings``
SETTINGS_VERSION = 1
#: ``[run]`` settings each host of ``facefleet worker`` takes from its own config (its cores, its
#: code): the rest are the run's, so every host writes alike
HOST_RUN_KEYS = ("writers", "file_processes", "stage_timings")


def settings_record(model: ModelConfig, run: RunConfig) -> dict[str, Any]:
    """run.json's ``settings``: the job's resolved ``[model]`` and ``[run]`` settings, versioned."""
    return {"version": SETTINGS_VERSION, "model": section_to_json(model), "run": section_to_json(run)}


def record_settings(record: dict[str, Any], base: JobConfig) -> tuple[ModelConfig, RunConfig]:
    """The run's ``[model]`` and ``[run]`` settings from its record, checked as a config file's
    (:class:`ConfigError` naming the key otherwise). A record written before runs recorded their
    ``settings`` gives what it holds (model settings, formats, leases, attempts, texture size, model
    folder, reconstructor) over ``base``'s."""
    where = f"{RUN_FILE} settings"
    settings = record.get("settings")
    if settings is not None:
        if not isinstance(settings, dict) or settings.get("version") != SETTINGS_VERSION:
            got = settings.get("version") if isinstance(settings, dict) else settings
            raise ConfigError(f"{where} version {got!r}; this facefleet reads version {SETTINGS_VERSION}")
        extra = sorted(set(settings) - {"version", "model", "run"})
        if extra:
            raise ConfigError(f"{where}: unknown keys {extra}")
        model = section_from_json("model", settings.get("model", {}), where)
        return model, section_from_json("run", settings.get("run", {}), where)
    old = ("formats", "lease_seconds", "max_attempts", "texture_size", "model_dir", "reconstructor")
    legacy = {
        "model": dict(record.get("model") or {}),
        "run": {k: record[k] for k in old if record.get(k) is not None},
    }
    cfg = apply_mapping(base, legacy, where)
    return cfg.model, cfg.run


def _show(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v)) or "(none)"
    return json.dumps(v) if isinstance(v, dict) else str(v)


def disk_message(text: str, out: Path) -> str:
    """One line for a queue error of a full or read-only OUT (else the error's first line)."""
    low = text.lower()
    if ("disk" in low and "full" in low) or "no space" in low:
        return f"no space left on device (writing to {out}); free some space and run again to resume"
    if "readonly" in low or "read-only" in low or "permission" in low:
        return f"cannot write to {out} (read-only or no permission); run again once it is writable"
    return text.splitlines()[0] if text else "the work queue failed"


RUN_META_KEY = "run"  # the run's record (what run.json holds) in its queue, for hosts that do not see OUT


def publish_run(q: WorkQueue, record: dict[str, Any]) -> None:
    """Store a run's record (run.json's content) in its queue, for external workers on any host."""
    q.set_meta(RUN_META_KEY, json.dumps(record, sort_keys=True, default=str))


def run_record(q: WorkQueue, out: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's record: the queue's ``run`` entry, else ``OUT/run.json`` (:class:`EngineError` when
    neither is there)."""
    text = q.get_meta(RUN_META_KEY)
    if text:
        record: dict[str, Any] = json.loads(text)
        return record
    path = Path(out) / RUN_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    except FileNotFoundError:
        raise EngineError(
            f"the queue holds no run and {path} does not exist: start the run first "
            "(facefleet run INPUT OUT --queue URL --executor external)"
        ) from None
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read {path}: {e}") from None
