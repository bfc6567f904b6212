"""Eager start: the compiled networks build on a background thread while eager ones run batches.

A GPU worker with ``[gpu] eager_start`` runs its first batches on a reconstructor without
``torch.compile`` and CUDA graphs (ready as soon as its weights are loaded) while
:class:`BackgroundCompile` builds a second one on a thread of its own: its weights (separate module
objects: the two never share a module), its ``torch.compile`` code (``Reconstructor.precompile``, on a
CUDA stream of its own, capturing no graph). The networks' thread asks :meth:`BackgroundCompile.take`
between batches; once the build is done it captures the compiled reconstructor's CUDA graphs (quick:
the code is in torch's caches by then) and runs every later batch on it. A build that fails leaves
the worker on the eager networks, with one warning line.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facefleet.engine.worker.spec import WorkerSpec
from facefleet.platforms import GpuSpec, compile_cache_dir


@dataclass(frozen=True)
class Built:
    """What :class:`BackgroundCompile` made: the compiled reconstructor (None if the build failed),
    the build's error, its seconds, and whether torch's compile artifacts were loaded before it."""

    rec: Any
    error: BaseException | None
    seconds: float
    artifacts_loaded: bool


class BackgroundCompile:
    """Builds a reconstructor with ``build()`` and compiles it (``precompile()``) on a daemon thread.

    ``artifacts``: the folder of torch's portable compile artifacts
    (:func:`facefleet.platforms.load_compile_artifacts`), loaded before the build and saved after it;
    None: neither."""

    def __init__(self, build: Callable[[], Any], device: Any, artifacts: Path | None = None) -> None:
        self._build = build
        self._device = device
        self._artifacts = artifacts
        self._done = threading.Event()
        self._result: Built | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._run, name="compile", daemon=True)

    def start(self) -> BackgroundCompile:
        self._thread.start()
        return self

    def _run(self) -> None:
        import torch

        t0 = time.perf_counter()
        loaded = False
        rec: Any = None
        error: BaseException | None = None
        try:
            loaded = start_compile(self._artifacts)
            rec = self._build()
            cuda = torch.device(self._device).type == "cuda"
            # a stream of its own: the eager networks' batches go on meanwhile on theirs
            stream = torch.cuda.Stream(self._device) if cuda else None
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                rec.precompile()
            finish_compile(self._artifacts, compiled=True)
        except BaseException as e:  # any failure keeps the worker on eager networks
            rec, error = None, e
        self._result = Built(rec, error, time.perf_counter() - t0, loaded)
        self._done.set()

    def done(self) -> bool:
        """Whether the build has ended (either way)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def take(self) -> Built | None:
        """The build's outcome once it has ended, exactly once (then None again); None before."""
        if self._taken or not self._done.is_set():
            return None
        self._taken = True
        return self._result


def compile_root() -> Path:
    """facefleet's cache folder (the parent of the models' cache: ``$FACEFLEET_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/facefleet``, else ``~/.cache/facefleet``), where compiled code is kept."""
    from facefleet.models.fetch import cache_dir

    return cache_dir().parent


def gpu_of(spec: WorkerSpec) -> GpuSpec | None:
    """The GPU of a GPU worker's profile (what the compile cache is keyed by); None on the CPU."""
    p = spec.profile
    if p.capability is None:
        return None
    return GpuSpec(p.name, p.memory_bytes, (p.capability[0], p.capability[1]))


def torch_version() -> str:
    """torch's version without importing it (the worker sets its environment first)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "unknown"


def compile_folder(spec: WorkerSpec) -> Path | None:
    """Where this GPU worker's compile artifacts live (:func:`facefleet.platforms.compile_cache_dir`
    under :func:`compile_root`); None on CPU workers."""
    if spec.profile.device == "cpu":
        return None
    return compile_cache_dir(compile_root(), gpu_of(spec), torch_version())


def compile_threads(folder: Path | None) -> int:
    """Compiler processes for this GPU worker (``TORCHINDUCTOR_COMPILE_THREADS``, set before torch
    loads): 1 when its compile folder holds this facefleet version's warm stamp (the compiled code
    comes from the cache: a pool would only add its start), else its share of the host's cores for
    the cold build (:func:`facefleet.platforms.cold_compile_threads`; the pool is shut down once the
    networks are built, :func:`finish_compile`)."""
    from facefleet import __version__
    from facefleet.platforms import cold_compile_threads, compile_cache_warm, cpu_count

    if folder is None or compile_cache_warm(folder, __version__):
        return 1
    return cold_compile_threads(cpu_count(), host_gpus())


def host_gpus() -> int:
    """GPUs of this host that its workers may use, counted without loading CUDA (device files, then
    ``CUDA_VISIBLE_DEVICES``): what a cold build's compiler pool shares the cores with."""
    import glob
    import os

    n = len(glob.glob("/dev/nvidia[0-9]*"))
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if seen is not None:
        listed = len([d for d in seen.split(",") if d.strip()])
        n = min(n, listed) if n else listed
    return max(1, n)


def start_compile(folder: Path | None) -> bool:
    """Before a worker builds its compiled networks: load the portable compile artifacts of ``folder``
    when the cache is cold (no warm stamp: e.g. a cache folder copied from another host, or only the
    artifacts file). Whether they were loaded."""
    from facefleet import __version__
    from facefleet.platforms import compile_cache_warm, load_compile_artifacts

    if folder is None or compile_cache_warm(folder, __version__):
        return False
    return load_compile_artifacts(folder)


def finish_compile(folder: Path | None, compiled: bool) -> None:
    """After a worker built its networks (``compiled``: with torch.compile): on a cold cache, save the
    portable artifacts and the warm stamp, and stop the compiler pool (its processes held ~0.5 GB each
    for as long as they lived)."""
    from facefleet import __version__
    from facefleet.platforms import compile_cache_warm, mark_compile_cache_warm, save_compile_artifacts

    if folder is None or not compiled or compile_cache_warm(folder, __version__):
        return
    save_compile_artifacts(folder)
    mark_compile_cache_warm(folder, __version__)
    try:
        from torch._inductor.async_compile import shutdown_compile_workers

        shutdown_compile_workers()
    except Exception:  # an older torch, or no pool was started: nothing holds memory
        pass


def eager_start(spec: WorkerSpec, device: str) -> bool:
    """Whether this worker starts on eager networks and switches to compiled ones built meanwhile
    (``[gpu] eager_start``): on CUDA, with the default reconstructor, compiled networks, the decoder
    process (no decoder thread of this process uses the device while graphs are captured) and one
    networks thread (the switch happens on it, between its batches)."""
    p = spec.profile
    return (
        device.startswith("cuda")
        and p.eager_start
        and p.compile
        and p.decode_process
        and p.network_threads == 1
        and not spec.run.reconstructor
    )
