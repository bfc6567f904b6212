"""A job resolved into what its coordinator needs: built by :func:`facefleet.engine.engine.plan_job`,
read by the coordinator and its lister."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facefleet.platforms import DeviceProfile


@dataclass(frozen=True)
class JobPlan:
    """A job resolved into what the coordinator needs (built by :mod:`facefleet.engine.engine`)."""

    job_id: str
    input_spec: Any
    out: Path
    queue_url: str
    profiles: tuple[DeviceProfile, ...]
    unit_size: int
    lease: float
    attempts: int
    max_restarts: int
    worker_kwargs: dict[str, Any]  # the WorkerSpec fields shared by every worker
    record: dict[str, Any]  # run.json
    report: bool = True
    log_json: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
