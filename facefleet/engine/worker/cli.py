"""``facefleet worker --queue URL --out DIR``: external workers, started by anything on any host.

A shell loop, torchrun, Slurm or Kubernetes starts this command on each host; it needs no
coordinator. It plans its own devices (``--devices``, ``--config``: this host's ``[gpu]``/``[cpu]``
settings), starts one worker process per device slot, restarts one that dies (its units go back to
the queue at once), and exits 0 once the queue's listing is done and no unit is left. What every host
must write alike (formats, model settings, texture size, leases, attempts, the input folder the
files mirror) comes from the run itself: the queue's ``run`` meta entry (see
:func:`facefleet.engine.layout.publish_run`), else ``OUT/run.json``, so every host writes the same
outputs.

Two hosts x N GPUs on one PostgreSQL queue, OUT on a shared file system::

    facefleet run photos/ /shared/out --queue postgresql://db/ff?schema=job1 --executor external
    # on each host (here both):
    facefleet worker --queue postgresql://db/ff?schema=job1 --out /shared/out --devices all

SIGINT or SIGTERM drains this host's workers (they finish the units they hold, exit 130); a second
one kills them and gives their units back.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from facefleet.engine.layout import EngineError, run_record
from facefleet.engine.queue import QueueError, WorkQueue, open_queue
from facefleet.engine.worker.spec import EXIT_OK, EXIT_OUTPUT, WorkerSpec, owner_id

RC_OK, RC_FAILED, RC_ERROR, RC_INTERRUPTED = 0, 1, 2, 130


class WorkerCliError(Exception):
    """This host cannot take part in the run (no run in the queue, bad settings): one line."""


@dataclass(frozen=True)
class HostPlan:
    """The worker processes of this host."""

    specs: tuple[WorkerSpec, ...]
    max_restarts: int


def plan_host(
    record: dict[str, Any],
    out: str,
    queue_url: str,
    devices: str | None,
    config: str | None,
    name: str,
    max_restarts: int | None,
) -> HostPlan:
    """This host's workers: devices and per-host settings (``[gpu]``, ``[cpu]``, the
    :data:`~facefleet.engine.layout.HOST_RUN_KEYS` of ``[run]``) from ``config``/``devices``; the
    run's ``[model]`` and ``[run]`` settings from its ``record`` (a model folder or custom
    reconstructor the run leaves unset may come from ``config``)."""
    from dataclasses import replace

    from facefleet.config import ConfigError, load_file
    from facefleet.config.loading import section_from_json
    from facefleet.config.sections import JobConfig
    from facefleet.engine.layout import HOST_RUN_KEYS, input_root, record_settings
    from facefleet.engine.worker.spec import file_writers
    from facefleet.platforms import plan_devices
    from facefleet.platforms.plan import worker_names

    try:
        host = load_file(config) if config else JobConfig()
        profiles = plan_devices(devices or host.devices, config=host)
        model, shared = record_settings(record, host)
    except (ConfigError, ValueError, OSError) as e:
        raise WorkerCliError(str(e)) from None
    run = replace(
        shared,
        **{k: getattr(host.run, k) for k in HOST_RUN_KEYS},
        model_dir=shared.model_dir or host.run.model_dir,
        reconstructor=shared.reconstructor or host.run.reconstructor,
    )
    run = replace(run, writers=run.writers or file_writers(len(profiles)))
    inp = record.get("input")
    job = record.get("job", "images")
    try:
        video = section_from_json("video", record.get("video", {}), "the run's record")
    except ConfigError as e:
        raise WorkerCliError(str(e)) from None
    specs = tuple(
        WorkerSpec(
            f"{name}/{wname}",
            out,
            prof,
            model=model,
            run=run,
            input_root=input_root(inp) if inp is not None else None,
            queue_url=queue_url,
            coordinator_pid=None,
            job=job,
            video=video,
        )
        for wname, prof in zip(worker_names(profiles), profiles, strict=True)
    )
    restarts = max_restarts if max_restarts is not None else 2 * len(specs) + 2
    return HostPlan(specs, restarts)


class HostSupervisor:
    """Starts this host's workers and watches them until the queue is done (or a signal)."""

    def __init__(self, plan: HostPlan, queue_url: str, poll: float = 0.5) -> None:
        from facefleet.engine.executors.local import LocalProcessExecutor, ProcessHandle

        self.plan = plan
        self.url = queue_url
        self.poll = poll
        self.executor = LocalProcessExecutor()
        self.handles: dict[str, ProcessHandle] = {}
        self.signals = 0
        self.restarts = 0
        self.done_units = 0
        self.error: str | None = None

    def _reap_poison(self, q: WorkQueue) -> None:
        """With no coordinator, the hosts split or fail poison units themselves (:mod:`.poison`)."""
        from facefleet.engine.worker.poison import reap_poison

        spec = self.plan.specs[0]
        try:
            for o in reap_poison(q, spec.out_dir, spec.run.max_attempts):
                if o.action == "failed":
                    print(f"facefleet worker: quarantined {o.items} image(s): {o.error}", file=sys.stderr)
        except OSError as e:
            self.error = self.error or f"cannot write to {spec.out_dir}: {e.strerror or e}"
            for h in self.handles.values():
                h.terminate()

    def _signal(self, signum: int, _: Any) -> None:
        self.signals += 1
        for h in list(self.handles.values()):
            if self.signals == 1:
                h.terminate()  # the worker drains
            else:
                h.kill()

    def run(self) -> int:
        old = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        q = open_queue(self.url)
        try:
            for spec in self.plan.specs:
                self.handles[spec.name] = self.executor.start(spec)
            last_poison = 0.0
            while self.handles:
                time.sleep(self.poll)
                self._reap(q)
                if time.monotonic() - last_poison >= 2.0:
                    last_poison = time.monotonic()
                    self._reap_poison(q)
            return self._code(q)
        finally:
            for h in self.handles.values():
                h.kill()
                h.join(5)
            q.close()
            for s, handler in old.items():
                signal.signal(s, handler)

    def _reap(self, q: WorkQueue) -> None:
        for name, h in list(self.handles.items()):
            code = h.exitcode
            if code is None:
                continue
            h.join()
            del self.handles[name]
            if code == EXIT_OK:
                continue
            owner = owner_id(name, h.pid or 0)
            released = q.release_owner(owner, f"worker {name} died (exit code {code})")
            print(
                f"facefleet worker: {name} died (exit code {code}); {released} unit(s) back to the queue",
                file=sys.stderr,
            )
            if code == EXIT_OUTPUT:
                self.error = self.error or f"cannot write to {h.spec.out_dir} (disk full or not writable)"
            elif not any(w["owner"] == owner for w in q.workers()):
                self.error = (
                    self.error or f"worker {name} failed to start (exit code {code}); see its error above"
                )
            if self.error:
                for other in self.handles.values():
                    other.terminate()
                continue
            done = q.counts()["done"]["units"]
            if done > self.done_units:  # the budget counts deaths since a unit last finished
                self.done_units, self.restarts = done, 0
            if self.signals or self.restarts >= self.plan.max_restarts or _finished(q):
                continue
            self.restarts += 1
            self.handles[name] = self.executor.start(h.spec)

    def _code(self, q: WorkQueue) -> int:
        if self.error:
            print(f"facefleet worker: error: {self.error}", file=sys.stderr)
            return RC_ERROR
        if _finished(q):
            return RC_OK
        if self.signals:
            return RC_INTERRUPTED
        if q.get_meta("drain") == "1":
            return RC_OK  # the run's coordinator drained it: this host is done
        print("facefleet worker: every worker died and the restart budget is used up", file=sys.stderr)
        return RC_FAILED


def _finished(q: WorkQueue) -> bool:
    return q.get_meta("listing_done") == "1" and q.remaining() == 0


def launcher_slot(environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(devices, name suffix) when a launcher started one process per GPU (torchrun's ``LOCAL_RANK``,
    Slurm's ``SLURM_LOCALID``): the process takes its rank's GPU (the CPU when there is none) rather
    than every GPU of the host; (None, "") otherwise."""
    env = os.environ if environ is None else environ
    rank = env.get("LOCAL_RANK") or env.get("SLURM_LOCALID")
    if rank is None or not rank.isdigit():
        return None, ""
    from facefleet.platforms import cuda_device_count

    return (rank if cuda_device_count() > int(rank) else "cpu"), f"-r{rank}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facefleet worker",
        description="Work on a run's queue from this host (no coordinator needed): one worker per "
        "device slot; exits 0 when the queue is done.",
    )
    p.add_argument("--queue", required=True, help="the run's work queue: postgresql://... (or a SQLite path)")
    p.add_argument("--out", required=True, help="the run's output folder (shared by every host)")
    p.add_argument(
        "--devices",
        default=None,
        help="auto (default: every GPU, else the CPU; under torchrun or srun, the rank's GPU), all, cpu, "
        "or GPU indices like 0,1",
    )
    p.add_argument("--config", default=None, help="TOML file with this host's [gpu]/[cpu]/[run] settings")
    p.add_argument("--name", default=None, help="this host's name in the run's report (default: host name)")
    p.add_argument(
        "--max-restarts", type=int, default=None, help="worker restarts (default 2 per worker + 2)"
    )
    return p


def worker_cli(argv: list[str]) -> int:
    """``facefleet worker``: returns 0 (queue done), 1 (workers kept dying), 2 (error), 130 (signal)."""
    args = _parser().parse_args(argv)
    out = os.path.abspath(os.path.expanduser(args.out))
    slot_devices, suffix = launcher_slot() if args.devices is None else (None, "")
    try:
        with open_queue(args.queue) as q:
            record = run_record(q, out)
        plan = plan_host(
            record,
            out,
            args.queue,
            args.devices or slot_devices,
            args.config,
            (args.name or socket.gethostname()) + suffix,
            args.max_restarts,
        )
    except (WorkerCliError, EngineError, QueueError) as e:
        print(f"facefleet worker: error: {e}", file=sys.stderr)
        return RC_ERROR
    return HostSupervisor(plan, args.queue).run()


if __name__ == "__main__":
    sys.exit(worker_cli(sys.argv[1:]))
