"""CPU defaults: how many worker processes, with how many torch threads each, cover a host's cores.

A CPU worker runs one batch at a time: it decodes the batch's files, then runs the networks, whose
small per-face ops (a 128 px detector, 192 px mesh crops) scale poorly over intra-op threads, so a
process per core beats one process with a thread per core (a worker decodes while another runs its
networks). Each process holds its own copy of torch and the networks, so many-core hosts group cores
into fewer, wider workers (:data:`MAX_CPU_WORKERS`) and never plan more processes than memory holds.
"""

from __future__ import annotations

#: torch threads per CPU worker while there are cores for more workers
THREADS_PER_WORKER = 1
#: most CPU worker processes planned by default; beyond it each worker gets more threads
MAX_CPU_WORKERS = 16
#: resident memory of one CPU worker (torch, the networks, a batch of decoded photos)
WORKER_BYTES = 1 << 30


def plan_cpu_workers(
    cores: int, workers: int | None = None, threads: int | None = None, memory: int | None = None
) -> tuple[int, int]:
    """(worker processes, torch threads each) for ``cores`` cores; ``workers`` / ``threads`` given
    by the config win. By default every core is used: ``cores / THREADS_PER_WORKER`` workers (a
    divisor of ``cores``, so every worker gets the same share), at most :data:`MAX_CPU_WORKERS` and
    what ``memory`` (bytes available; None: unknown) holds at :data:`WORKER_BYTES`."""
    cores = max(1, cores)
    if workers is None:
        cap = min(MAX_CPU_WORKERS, max(1, cores // THREADS_PER_WORKER))
        if threads is not None:
            cap = min(cap, max(1, cores // threads))
        if memory is not None:
            cap = min(cap, max(1, memory // WORKER_BYTES))
        workers = max(w for w in range(1, cap + 1) if cores % w == 0)
    if threads is None:
        threads = max(1, cores // workers)
    return workers, threads
