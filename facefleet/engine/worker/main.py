"""One worker process: its entry point (:func:`worker_main`) and the :class:`Worker` that runs the
stages on threads, with bounded queues (backpressure at every step) between them::

    claimer ──(item, read future)──▶ batcher/decoders ──batch──▶ networks ──results──▶ writer
      │ claim.py: reader pool        read.py: decode            networks.py            sink.py: per-image
      │                              (nvJPEG / Pillow)          Reconstructor          files (pool)
      │                                                                                  │ finished units
      │                                           finisher: wait for files, flush, unit Parquet, done
    heartbeat thread: extends this worker's leases, flushes progress counters

On CUDA, reading and decoding run in a child process (``[gpu] decode_process``, default on;
:mod:`.decode_proc`): the batcher sends it each batch's paths and a free slot of device memory the
worker shares with it, so no thread of the worker process reads or decodes (each would take the GIL
the device thread needs for every torch call). A child that cannot start leaves the worker on threads.

Batches never span units; a unit is marked done only after its Parquet file is written. A CUDA error
that leaves the device unusable ends the process (exit 1): the coordinator gives its units back and
starts a new worker (an external worker's units come back when their leases expire).

This module does not import torch at import time (the process entry sets thread counts first).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
import traceback

from facefleet.config import ConfigError
from facefleet.engine.queue import QueueError, QueueStorageFull, open_queue
from facefleet.engine.worker.build import make_reconstructor
from facefleet.engine.worker.claim import ClaimStage
from facefleet.engine.worker.errors import OutputError
from facefleet.engine.worker.networks import NetworksStage
from facefleet.engine.worker.sink import SinkStage
from facefleet.engine.worker.spec import EXIT_ERROR, EXIT_OK, EXIT_OUTPUT, WorkerSpec, visible_device
from facefleet.engine.worker.startup import (
    BackgroundCompile,
    compile_folder,
    compile_root,
    compile_threads,
    eager_start,
    gpu_of,
    torch_version,
)
from facefleet.platforms import compile_env

__all__ = ["Worker", "WorkerSpec", "worker_main"]


def worker_main(spec_json: str) -> None:
    """Process entry point (spawn target): reads its :class:`WorkerSpec` from the JSON it is started
    with (:meth:`WorkerSpec.to_json`; a spec it cannot read ends it with one line and exit 1), sets up
    the process (devices seen, thread counts) before torch loads, runs a :class:`Worker` and exits with
    its code.

    Ctrl-C belongs to the coordinator of a coordinator-started worker (it drains the run through the
    queue). An external worker (no ``coordinator_pid``) drains itself on SIGINT or SIGTERM: it claims
    no more units and finishes those it holds."""
    started = time.perf_counter()  # the process's launch, for the start-up lines
    try:
        spec = WorkerSpec.from_json(spec_json)
    except ConfigError as e:
        print(f"facefleet worker: error: {e}", file=sys.stderr, flush=True)
        os._exit(EXIT_ERROR)
    external = spec.coordinator_pid is None
    if not external:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    local = spec.profile.device
    if local == "cpu":
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(spec.profile.threads)
    else:
        # This process sees only its GPU (as cuda:0): no stray CUDA contexts on other GPUs from
        # pinned memory, decoders or library handles created on "the current device".
        threads = compile_threads(compile_folder(spec))  # counts the host's GPUs: before the next line
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_device(spec.profile.device)
        # torch.compile's caches in facefleet's cache folder, one per GPU kind and torch build (a
        # user's own TORCHINDUCTOR_* settings win); a pool of compiler processes only while a cold
        # cache is built (startup.compile_threads: the pool is shut down once the networks are built)
        for k, v in compile_env(compile_root(), gpu_of(spec), torch_version(), threads).items():
            os.environ.setdefault(k, v)
        local = "cuda:0"
    import torch

    # this process's intra-op threads: its share of the host's cores (set here, where the process is
    # set up, never as a side effect of building an object)
    torch.set_num_threads(max(1, spec.profile.threads))
    code = EXIT_ERROR
    try:
        if spec.job == "video":
            from facefleet.engine.worker.video import VideoWorker

            worker: Worker | VideoWorker = VideoWorker(spec, local_device=local, started=started)
        else:
            worker = Worker(spec, local_device=local, started=started)
        if external:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: worker.drain())
        code = worker.run()
    except (OutputError, QueueStorageFull) as e:
        print(f"facefleet worker {spec.name}: error: {e}", file=sys.stderr, flush=True)
        code = EXIT_OUTPUT
    except QueueError as e:  # the queue's storage or server, not this worker's code: one line
        print(f"facefleet worker {spec.name}: error: {e}", file=sys.stderr, flush=True)
        code = EXIT_ERROR
    except BaseException:
        print(f"facefleet worker {spec.name} ({spec.profile.device}) failed:", file=sys.stderr)
        traceback.print_exc()
        code = EXIT_ERROR
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Worker(ClaimStage, NetworksStage, SinkStage):
    """The stages of one worker on their threads (the networks' stage on the calling thread)."""

    def drain(self) -> None:
        """Claim no more units; finish those held, then :meth:`run` returns (safe from a signal
        handler)."""
        self._drain.set()

    def run(self) -> int:
        """Runs the stages until the queue has no unit left for it, a drain, or a failure (raised
        after the units it holds are given back); returns :data:`EXIT_OK`."""
        import torch

        spec = self.spec
        local = self.local_device
        self.device = torch.device(local)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # the GPU JPEG decoder's set-up (~1-2 s for nvImageCodec) overlaps loading the networks
            from facefleet.io.gpu_decode import configure_nvimgcodec, jpeg_decoder

            configure_nvimgcodec(spec.profile.decode_backends, spec.profile.decode_cpu_threads)
            self._decoder_setup = threading.Thread(
                target=jpeg_decoder,
                args=(self.device, spec.profile.decoder),
                name="decoder-setup",
                daemon=True,
            )
            self._decoder_setup.start()
        if spec.profile.decode_process:
            self._start_decoder_process()
        if self._rec is None:
            eager = eager_start(spec, local)
            self._rec = make_reconstructor(spec, local, eager=eager)
            if eager:  # started once the eager networks are ready (_device_stage)
                build = functools.partial(make_reconstructor, spec, local)
                self._compiling = BackgroundCompile(build, self.device, compile_folder(spec))
        self._ring = self._texture_ring()
        db = open_queue(spec.queue_path)
        db.register_worker(self.owner, spec.name, spec.profile.device, self.pid)
        self._queue = db  # the networks' thread (this one) records the eager start's takeover in it
        threads = [
            threading.Thread(target=self._guard(self._heartbeat), name="heartbeat", daemon=True),
            threading.Thread(target=self._guard(self._claimer), name="claimer", daemon=True),
            threading.Thread(target=self._guard(self._batcher), name="batcher", daemon=True),
            threading.Thread(target=self._guard(self._writer), name="writer", daemon=True),
        ]
        from facefleet.engine.worker.stacks import BatchWindowProfiler, StackSampler

        # profilers of the steady state: they start once the networks are ready (_device_stage)
        sampler = self._sampler = StackSampler.from_env(spec.name.replace(":", "_"))
        if self.device.type == "cuda":
            self._window = BatchWindowProfiler.from_env(spec.name.replace(":", "_"))
        self._batcher_thread = threads[2]  # the device stage starts it
        for t in threads:
            if t is not self._batcher_thread:
                t.start()
        try:
            self._guard(self._device_stage)()
        finally:
            self._stop.set()
            if sampler is not None:
                sampler.stop()
            for t in threads[1:]:
                if t.ident is not None:  # the batcher does not start when the warm-up failed
                    t.join(timeout=60)
            if self._proc is not None:
                self._proc.close()
            if self._ring is not None:
                self._ring.close()
            self._flush_progress(db)
            if self._fatal is not None:
                with self._held_lock:
                    held = list(self._held)
                for uid in held:
                    db.release(uid, self.owner, f"worker {spec.name} failed: {self._fatal!r}")
            db.close()
        if self._fatal is not None:
            raise self._fatal
        return EXIT_OK
