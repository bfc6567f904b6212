"""What a worker process is given (:class:`WorkerSpec`), its exit codes and its lease owner id.

A :class:`WorkerSpec` is typed all the way: the worker's device (:class:`DeviceProfile`, the resolved
``[gpu]``/``[cpu]`` settings of its device) and the job's ``[model]`` and ``[run]`` settings as the
config dataclasses themselves. It crosses into a worker process in one form only: versioned JSON
(:meth:`WorkerSpec.to_json`), which :meth:`WorkerSpec.from_json` checks key by key as a config file is
checked, so a worker never runs on settings that a config object would have refused.

No torch at import: spawned workers set their thread counts before torch loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facefleet.config import ConfigError, ModelConfig, RunConfig, VideoConfig
from facefleet.config.loading import section_from_json, section_to_json
from facefleet.engine.queue import QUEUE_FILE
from facefleet.platforms import DeviceProfile

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_OUTPUT = 3  # OUT cannot be written (disk full, read-only, permission): restarting won't help

TEXTURE_FORMATS = frozenset({"png", "obj", "glb"})
PROCESS_FORMATS = TEXTURE_FORMATS | {"overlay"}  # written by a process pool on GPU workers

#: the form of :meth:`WorkerSpec.to_json`; a worker refuses another (a host running another facefleet)
SPEC_VERSION = 2
#: the kinds of job a worker runs
JOBS = ("images", "video")
#: per-image file writers of a worker whose ``[run] writers`` is unset (the planners set it)
DEFAULT_WRITERS = 2


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs: its name, OUT, its device and the job's settings.

    ``model`` builds the worker's pipeline (:meth:`ModelConfig.arguments`); ``run`` holds the job's
    settings as the planner resolved them (formats, leases, attempts, file cap, writers, texture size,
    model folder, a custom ``reconstructor``). ``reconstructor_args`` are keyword arguments of a custom
    ``run.reconstructor`` callable only (JSON values: plug-ins and tests), never facefleet's own settings.
    ``readers``, ``decoders`` and ``poll_seconds`` are the worker's internal pacing, not settings."""

    name: str
    out_dir: str
    profile: DeviceProfile
    model: ModelConfig = field(default_factory=ModelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    input_root: str | None = None  # the folder the outputs mirror (None: sources' own folders)
    queue_url: str | None = None  # the work queue (open_queue's URL); None: OUT/_queue.sqlite
    # the coordinator that started this worker: the worker drains when its parent is another process
    # (the coordinator is gone). None for external workers (``facefleet worker``), which need none.
    coordinator_pid: int | None = None
    reconstructor_args: tuple[tuple[str, Any], ...] = ()
    # "images" (units of image files: the Worker) or "video" (units of frame ranges: the VideoWorker)
    job: str = "images"
    video: VideoConfig = field(default_factory=VideoConfig)
    # video workers: chunks held at once (0: the profile's batch size); the job caps it so that every
    # worker gets chunks of a short job
    streams: int = 0
    readers: int = 4
    # batches decoded at once (on CUDA at most profile.batches_in_flight - 1; on CPU each batch uses
    # `readers` threads)
    decoders: int = 2
    poll_seconds: float = 0.25

    def __post_init__(self) -> None:
        if self.job not in JOBS:
            raise ConfigError(f"worker spec job must be one of {', '.join(JOBS)}, got {self.job!r}")
        if self.reconstructor_args and not self.run.reconstructor:
            raise ConfigError(
                "reconstructor arguments are for a custom run.reconstructor callable; facefleet's "
                "pipeline takes its settings from [model] and [run]"
            )

    @property
    def queue_path(self) -> str:
        """Where the queue is: :attr:`queue_url`, else ``OUT/_queue.sqlite``."""
        return self.queue_url or str(Path(self.out_dir) / QUEUE_FILE)

    @property
    def writers(self) -> int:
        """Per-image file writers of this worker (``[run] writers``)."""
        return self.run.writers or DEFAULT_WRITERS

    def to_json(self) -> str:
        """This spec as versioned JSON: what a worker process is started with."""
        return json.dumps(
            {
                "version": SPEC_VERSION,
                "name": self.name,
                "out_dir": self.out_dir,
                "profile": self.profile.to_dict(),
                "model": section_to_json(self.model),
                "run": section_to_json(self.run),
                "input_root": self.input_root,
                "queue_url": self.queue_url,
                "coordinator_pid": self.coordinator_pid,
                "reconstructor_args": dict(self.reconstructor_args),
                "job": self.job,
                "video": section_to_json(self.video),
                "streams": self.streams,
                "readers": self.readers,
                "decoders": self.decoders,
                "poll_seconds": self.poll_seconds,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """The spec of :meth:`to_json`'s text, every part checked: its version, no unknown or missing
        key, each value's type, and the ``[model]``/``[run]`` settings as a config file's are.
        Raises :class:`ConfigError` naming what is wrong."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"worker spec is not JSON: {e}") from None
        if not isinstance(data, dict) or data.get("version") != SPEC_VERSION:
            got = data.get("version") if isinstance(data, dict) else None
            raise ConfigError(f"worker spec version {got!r}; this facefleet reads version {SPEC_VERSION}")
        expected = {f.name for f in dataclasses.fields(cls)} | {"version"}
        _same_keys(data, expected, "worker spec")
        args = data.get("reconstructor_args")
        if not isinstance(args, dict):
            raise ConfigError(f"worker spec reconstructor_args must be an object, got {args!r}")
        return cls(
            name=_typed(data, "name", str),
            out_dir=_typed(data, "out_dir", str),
            profile=_profile(data["profile"]),
            model=section_from_json("model", data["model"], "worker spec"),
            run=section_from_json("run", data["run"], "worker spec"),
            input_root=_typed(data, "input_root", str, optional=True),
            queue_url=_typed(data, "queue_url", str, optional=True),
            coordinator_pid=_typed(data, "coordinator_pid", int, optional=True),
            reconstructor_args=tuple(args.items()),
            job=_typed(data, "job", str),
            video=section_from_json("video", data["video"], "worker spec"),
            streams=_typed(data, "streams", int),
            readers=_typed(data, "readers", int),
            decoders=_typed(data, "decoders", int),
            poll_seconds=float(_typed(data, "poll_seconds", (int, float))),
        )


def _same_keys(data: dict[str, Any], expected: set[str], where: str) -> None:
    unknown, missing = sorted(set(data) - expected), sorted(expected - set(data))
    if unknown or missing:
        raise ConfigError(f"{where}: unknown keys {unknown}, missing keys {missing}")


def _typed(data: dict[str, Any], key: str, kind: Any, *, optional: bool = False) -> Any:
    value = data[key]
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"worker spec {key} has the wrong type: {value!r}")
    return value


def _profile(data: Any) -> DeviceProfile:
    """A :class:`DeviceProfile` from its ``to_dict()``: the same keys, each of its field's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"worker spec profile must be an object, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(DeviceProfile)}
    _same_keys(data, set(fields), "worker spec profile")
    values = dict(data)
    cap = values["capability"]
    if cap is not None:
        if not (isinstance(cap, list) and len(cap) == 2 and all(isinstance(c, int) for c in cap)):
            raise ConfigError(f"worker spec profile capability must be [major, minor], got {cap!r}")
        values["capability"] = (cap[0], cap[1])
    for name, f in fields.items():
        if name != "capability" and f.default is not dataclasses.MISSING and f.default is not None:
            _typed(values, name, type(f.default))
    for name in ("device", "name", "precision", "decoder"):
        _typed(values, name, str)
    for name in ("batch_size", "threads"):
        _typed(values, name, int)
    return DeviceProfile(**values)


def file_writers(workers: int) -> int:
    """Per-image file writers of each of a host's ``workers`` worker processes when ``[run] writers``
    is unset: PNG and OBJ encoding need CPU, so the host's cores are shared among the workers."""
    from facefleet.platforms import cpu_count

    return max(2, min(16, cpu_count() // max(1, workers) // 2))


def visible_device(device: str) -> str:
    """CUDA_VISIBLE_DEVICES entry for ``cuda:N`` as the coordinator numbers devices (which
    already honours the coordinator's own CUDA_VISIBLE_DEVICES)."""
    idx = int(device.split(":")[1])
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent:
        ids = [p.strip() for p in parent.split(",") if p.strip()]
        if idx < len(ids):
            return ids[idx]
    return str(idx)


def owner_id(name: str, pid: int) -> str:
    """Lease owner of one worker incarnation."""
    return f"{socket.gethostname()}:{pid}:{name}"
