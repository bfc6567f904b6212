"""facefleet.engine: the batch engine (units of work, durable queue, workers, resume).

``run(INPUT, OUT, devices="auto", ...)`` processes a folder/glob/list/bucket with every device
of the host; ``run_cli(argv)`` is ``facefleet run``. Imports are lazy (no torch at import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["EngineError", "RunSummary", "read_manifest", "run", "run_cli"]

if TYPE_CHECKING:
    from facefleet.engine.cli import run_cli
    from facefleet.engine.manifest import read_manifest
    from facefleet.engine.runner import EngineError, RunSummary, run


def __getattr__(name: str) -> Any:
    if name in ("run", "RunSummary", "EngineError"):
        from facefleet.engine import runner

        return getattr(runner, name)
    if name == "run_cli":
        from facefleet.engine.cli import run_cli

        return run_cli
    if name == "read_manifest":
        from facefleet.engine.manifest import read_manifest

        return read_manifest
    raise AttributeError(name)
