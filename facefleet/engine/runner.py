"""Compatibility names: the batch engine's coordinator was split into :mod:`.engine` (the Engine
object and :func:`run`), :mod:`.coordinator`, :mod:`.listing`, :mod:`.layout` and :mod:`.totals`."""

from facefleet.engine.coordinator import worker_names
from facefleet.engine.engine import Engine, Job, RunOptions, run
from facefleet.engine.layout import EngineError, input_identity, input_root
from facefleet.engine.totals import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, RunSummary

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "Engine",
    "EngineError",
    "Job",
    "RunOptions",
    "RunSummary",
    "input_identity",
    "input_root",
    "run",
    "worker_names",
]
