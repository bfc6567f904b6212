"""``facefleet worker --queue URL --out DIR``: one worker of a run's queue, started by anything
(a shell loop, torchrun, Slurm, Kubernetes) on any host; the engine's worker command line
(:func:`facefleet.engine.worker.cli.worker_cli`) parses the rest."""

from __future__ import annotations

import importlib
import sys

WORKER_CLI = "facefleet.engine.worker.cli"


def worker_main(argv: list[str]) -> int:
    try:
        module = importlib.import_module(WORKER_CLI)
    except ModuleNotFoundError as e:
        if e.name not in (WORKER_CLI, WORKER_CLI.rpartition(".")[0]):
            raise
        print(
            f"facefleet worker: unavailable in this installation ({WORKER_CLI} is missing)", file=sys.stderr
        )
        return 2
    return int(module.worker_cli(argv))
