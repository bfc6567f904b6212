"""facefleet.engine.worker: one worker process, in stages (claim -> read/decode -> networks -> sink).

- :mod:`.main`: the process entry (:func:`worker_main`) and :class:`Worker`, which runs the stages;
- :mod:`.spec`: :class:`WorkerSpec`, exit codes, lease owner ids;
- :mod:`.claim`, :mod:`.read`, :mod:`.networks`, :mod:`.sink`: the stages; :mod:`.base`: their
  shared state; :mod:`.errors`: error texts and categories;
- :mod:`.decode_proc`, :mod:`.texture_ring`: the decoder child process and the textures' shared
  memory; :mod:`.stacks`: optional profilers;
- :mod:`.cli`: ``facefleet worker``, external workers on any host.

Names import lazily: importing the package loads neither torch nor the stages.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facefleet.engine.worker.base import BATCH_STAGES
    from facefleet.engine.worker.errors import OutputError, error_kind, error_text
    from facefleet.engine.worker.main import Worker, worker_main
    from facefleet.engine.worker.spec import (
        EXIT_ERROR,
        EXIT_OK,
        EXIT_OUTPUT,
        WorkerSpec,
        owner_id,
        visible_device,
    )

__all__ = [
    "BATCH_STAGES",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "OutputError",
    "Worker",
    "WorkerSpec",
    "error_kind",
    "error_text",
    "owner_id",
    "visible_device",
    "worker_main",
]

_WHERE = {
    "BATCH_STAGES": "base",
    "OutputError": "errors",
    "error_kind": "errors",
    "error_text": "errors",
    "Worker": "main",
    "worker_main": "main",
    "EXIT_ERROR": "spec",
    "EXIT_OK": "spec",
    "EXIT_OUTPUT": "spec",
    "WorkerSpec": "spec",
    "owner_id": "spec",
    "visible_device": "spec",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"facefleet.engine.worker.{_WHERE[name]}"), name)
    raise AttributeError(name)
