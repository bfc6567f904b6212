"""A job resolved into what its coordinator needs: built by :func:`facefleet.engine.engine.plan_job`,
read by the coordinator and its lister. Its settings are the job's typed config, resolved (unit size,
restart budget and writers filled in); the coordinator makes each worker's
:class:`~facefleet.engine.worker.spec.WorkerSpec` from it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facefleet.config import JobConfig
from facefleet.engine.worker.spec import WorkerSpec
from facefleet.platforms import DeviceProfile


@dataclass(frozen=True)
class JobPlan:
    """A job resolved into what the coordinator needs (built by :mod:`facefleet.engine.engine`)."""

    job_id: str
    input_spec: Any
    out: Path
    queue_url: str
    profiles: tuple[DeviceProfile, ...]
    config: JobConfig  # resolved: run.unit_size, run.max_restarts and run.writers are set
    record: dict[str, Any]  # run.json
    input_root: str | None = None  # the folder the outputs mirror
    reconstructor_args: tuple[tuple[str, Any], ...] = ()  # a custom reconstructor's own arguments
    unit_size_given: bool = False  # set by the job (a resume must then match it)
    report: bool = True
    log_json: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = self.config.run
        if r.unit_size is None or r.max_restarts is None or r.writers is None:
            raise ValueError("a JobPlan's [run] is resolved: unit_size, max_restarts and writers are set")

    def worker_spec(self, name: str, profile: DeviceProfile) -> WorkerSpec:
        """The spec of this job's worker ``name`` on ``profile``'s device, started by this process:
        the job's ``[model]`` and ``[run]`` settings as they are, typed."""
        return WorkerSpec(
            name,
            str(self.out),
            profile,
            model=self.config.model,
            run=self.config.run,
            input_root=self.input_root,
            queue_url=self.queue_url,
            coordinator_pid=os.getpid(),
            reconstructor_args=self.reconstructor_args,
        )

    @property
    def unit_size(self) -> int:
        """Images per unit (``[run] unit_size`` as resolved; the lister may cut fewer)."""
        return self.config.run.unit_size or 0  # set: __post_init__

    @property
    def lease(self) -> float:
        """Seconds a claimed unit stays a worker's without a heartbeat (``[run] lease_seconds``)."""
        return self.config.run.lease_seconds

    @property
    def attempts(self) -> int:
        """Attempts before a unit's images fail (``[run] max_attempts``)."""
        return self.config.run.max_attempts

    @property
    def max_restarts(self) -> int:
        """Worker restarts before the job stops (``[run] max_restarts`` as resolved)."""
        return self.config.run.max_restarts or 0  # set: __post_init__
