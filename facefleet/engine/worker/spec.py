"""What a worker process is given (:class:`WorkerSpec`), its exit codes and its lease owner id.

No torch at import: spawned workers set their thread counts before torch loads.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facefleet.engine.queue import QUEUE_FILE
from facefleet.io.read import MAX_FILE_BYTES
from facefleet.platforms import DeviceProfile

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_OUTPUT = 3  # OUT cannot be written (disk full, read-only, permission): restarting won't help

TEXTURE_FORMATS = frozenset({"png", "obj", "glb"})
PROCESS_FORMATS = TEXTURE_FORMATS | {"overlay"}  # written by a process pool on GPU workers


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs (picklable: it crosses a spawn boundary)."""

    name: str
    out_dir: str
    profile: DeviceProfile
    formats: tuple[str, ...] = ()
    input_root: str | None = None
    lease_seconds: float = 30.0
    max_attempts: int = 3
    model_dir: str | None = None
    texture_size: int = 512
    reconstructor: str | None = None  # "module:callable"; default facefleet.pipeline.Reconstructor
    reconstructor_kwargs: dict[str, Any] = field(default_factory=dict)
    readers: int = 4
    # batches decoded at once (on CUDA at most profile.batches_in_flight - 1; on CPU each batch uses
    # `readers` threads)
    decoders: int = 2
    writers: int = 2
    file_processes: bool | None = None  # per-image files in processes (None: on GPU workers, see SinkStage)
    # the coordinator that started this worker: the worker drains when its parent is another process
    # (the coordinator is gone). None for external workers (``facefleet worker``), which need none.
    coordinator_pid: int | None = None
    stage_timings: bool = True  # per-stage seconds (CUDA events on GPUs: no extra synchronisation)
    poll_seconds: float = 0.25
    queue_url: str | None = None  # the work queue (open_queue's URL); None: OUT/_queue.sqlite
    max_file_bytes: int = MAX_FILE_BYTES  # larger input files are refused unread

    @property
    def queue_path(self) -> str:
        """Where the queue is: :attr:`queue_url`, else ``OUT/_queue.sqlite``."""
        return self.queue_url or str(Path(self.out_dir) / QUEUE_FILE)


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
