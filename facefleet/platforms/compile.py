"""Where torch.compile keeps what it builds, per GPU and torch version.

Inductor's caches (FX graphs, autotuning, Triton kernels) are valid for one GPU architecture and one
torch build; kept in facefleet's cache folder under a key of both, a second run on the same kind of
GPU loads the compiled graphs instead of building them again, and a host with another GPU or torch
never reads ones that do not fit. :func:`compile_env` gives the variables a worker sets in its own
process before it imports torch (nothing here changes the calling process).

A stamp (:func:`mark_compile_cache_warm`) says that a worker of this facefleet version built its
networks from that folder. A worker that finds it compiles in its own process (the code comes from the
cache: a pool of compiler processes would only add its start) and skips the portable artifacts file
(loading it rewrites caches that are already on disk, seconds of work); one that does not
compiles with a pool of compiler processes, shut down once its networks are built."""

from __future__ import annotations

import re
from pathlib import Path

from facefleet.platforms.gpu import GpuSpec


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


def compile_cache_key(spec: GpuSpec | None, torch_version: str) -> str:
    """``h200-sm90-torch2.13.0-cu128`` for an H200 and torch 2.13.0+cu128; ``cpu-torch...`` without
    a GPU."""
    device = (
        "cpu"
        if spec is None
        else f"{_slug(spec.name.removeprefix('NVIDIA '))}-sm{spec.capability[0]}{spec.capability[1]}"
    )
    return f"{device}-torch{_slug(torch_version.replace('+', '-'))}"


def compile_cache_dir(root: str | Path, spec: GpuSpec | None, torch_version: str) -> Path:
    """The folder of torch.compile's artifacts for ``spec`` and ``torch_version`` under ``root``
    (facefleet's cache folder)."""
    return Path(root) / "inductor" / compile_cache_key(spec, torch_version)


def compile_env(
    root: str | Path, spec: GpuSpec | None, torch_version: str, compile_threads: int = 1
) -> dict[str, str]:
    """Environment variables that keep Inductor's FX-graph and autograd caches, on disk, in
    :func:`compile_cache_dir`, and compile with ``compile_threads`` processes (1: in the worker's own
    process); set by a worker process before it imports torch."""
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(compile_cache_dir(root, spec, torch_version)),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
        "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, int(compile_threads))),
    }


def cold_compile_threads(cores: int, workers: int) -> int:
    """Compiler processes for one of ``workers`` GPU workers on a host of ``cores`` cores building its
    networks with nothing cached: its share of the cores, at most 16 (each holds ~0.5 GB while the
    pool lives; the Triton kernels of the three networks are ~330 small compilations)."""
    return max(1, min(16, cores // max(1, workers)))


WARM_FILE = "warm.json"


def compile_cache_warm(folder: str | Path, tag: str) -> bool:
    """Whether a worker tagged ``tag`` (facefleet's version) has built its networks from ``folder``
    (:func:`mark_compile_cache_warm`)."""
    import json

    try:
        return json.loads((Path(folder) / WARM_FILE).read_text()).get("tag") == tag
    except (OSError, ValueError, AttributeError):
        return False


def mark_compile_cache_warm(folder: str | Path, tag: str) -> bool:
    """Record that the networks of facefleet ``tag`` were built from ``folder`` (atomically: a temporary
    file renamed over the old one). False when the folder cannot be written (the next worker then
    compiles as on a cold cache, which is slower, not wrong)."""
    import json

    return _write_atomic(Path(folder), WARM_FILE, json.dumps({"tag": tag}).encode())


def _write_atomic(folder: Path, name: str, data: bytes) -> bool:
    import os
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True
    except OSError:
        return False


ARTIFACTS_FILE = "compile_artifacts.bin"


def load_compile_artifacts(folder: str | Path) -> bool:
    """Load torch's portable compile artifacts (``torch.compiler.load_cache_artifacts``, torch >= 2.7)
    from ``folder`` (:func:`compile_cache_dir`) into this process's compile caches, before compiling.
    False when there is no file, this torch has no such function, or loading fails (compiling then
    builds what is missing, as without the file). Imports torch."""
    import torch

    load = getattr(getattr(torch, "compiler", None), "load_cache_artifacts", None)
    path = Path(folder) / ARTIFACTS_FILE
    if load is None or not path.is_file():
        return False
    try:
        return load(path.read_bytes()) is not None
    except Exception:  # a damaged or foreign file: torch's own caches still work
        return False


def save_compile_artifacts(folder: str | Path) -> bool:
    """Write the compile artifacts this process made or loaded (``torch.compiler.save_cache_artifacts``,
    torch >= 2.7) to ``folder`` (:func:`compile_cache_dir`), atomically (a temporary file renamed
    over the old one: concurrent workers never read half a file). False when torch has no such
    function, there is nothing to save, or the folder cannot be written."""
    import torch

    save = getattr(getattr(torch, "compiler", None), "save_cache_artifacts", None)
    if save is None:
        return False
    try:
        got = save()
    except Exception:  # torch's own failure to collect them: the run goes on without the file
        return False
    if got is None or not got[0]:
        return False
    return _write_atomic(Path(folder), ARTIFACTS_FILE, got[0])
