"""facefleet.engine: the batch engine (units of work, durable queue, workers, resume).

``Engine`` runs jobs and publishes their typed events (:mod:`facefleet.engine.events`);
``run(INPUT, OUT, devices="auto", ...)`` is the one-call API over it; ``write_run_report(OUT)``
rebuilds a run's stats and report from its queue alone. Imports are lazy (no torch at import).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "Engine",
    "EngineError",
    "Job",
    "RunOptions",
    "RunSummary",
    "read_manifest",
    "rebuild_stats",
    "run",
    "write_run_report",
]

if TYPE_CHECKING:
    from facefleet.engine.engine import Engine, Job, RunOptions, run
    from facefleet.engine.layout import EngineError
    from facefleet.engine.manifest import read_manifest
    from facefleet.engine.totals import RunSummary, rebuild_stats, write_run_report

_WHERE = {
    "Engine": "engine",
    "Job": "engine",
    "RunOptions": "engine",
    "run": "engine",
    "EngineError": "layout",
    "RunSummary": "totals",
    "rebuild_stats": "totals",
    "write_run_report": "totals",
    "read_manifest": "manifest",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"facefleet.engine.{_WHERE[name]}"), name)
    raise AttributeError(name)
