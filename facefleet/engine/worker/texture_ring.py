"""Shared-memory slots through which a GPU worker hands each batch's textures to its writer processes.

Why: with OBJ/PNG/GLB output a batch of 128 faces carries 128 MiB of RGBA textures (512 x 512 x 4).
Handed to the process pool as arrays, they are pickled and pushed through a pipe 64 KB at a time by a
thread of the worker process, every write giving the GIL up and taking it back: the device thread
loses the GIL at each of its torch calls to that thread. On the development machine (2 cores), a
thread making tiny torch calls lost ~700 of them per texture handed over pickled, ~80 per texture
through these slots, which also moved 6.7x the textures per second (docs/benchmarks.md, seventh
session).

The device thread copies a batch's textures from the GPU straight into a free slot (``texture_out`` of
:meth:`facefleet.pipeline.Reconstructor.reconstruct_tensors`); the writer thread sends each face's
:class:`TextureRef` (name, offset, shape) instead of its pixels, the writer process maps the slot
(:func:`resolve`), and the slot is free again once every file of the batch is written. Each slot is
touched once at creation, so no batch pays for page faults (a fresh block per batch did: slower than
pickling, sixth session). Faces that do not fit in a slot travel pickled, as before.
"""

from __future__ import annotations

import contextlib
import queue
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TextureRef:
    """Where a texture lies in a :class:`TextureRing` slot."""

    name: str
    offset: int
    shape: tuple[int, ...]


class TextureRing:
    """``slots`` shared-memory blocks of ``capacity`` bytes each, and the free ones."""

    def __init__(self, slots: int, capacity: int) -> None:
        self.capacity = int(capacity)
        self._shm: list[shared_memory.SharedMemory] = []
        self.views: list[np.ndarray] = []
        try:
            for _ in range(max(1, int(slots))):
                shm = shared_memory.SharedMemory(create=True, size=self.capacity)
                self._shm.append(shm)
                view = np.ndarray((self.capacity,), np.uint8, buffer=shm.buf)
                view.fill(0)  # every page faulted in now, once
                self.views.append(view)
        except BaseException:
            self.close()
            raise
        self._base = [int(v.__array_interface__["data"][0]) for v in self.views]
        self._free: queue.Queue[int] = queue.Queue()
        for k in range(len(self._shm)):
            self._free.put(k)

    def take(self, timeout: float) -> int | None:
        """A free slot, or None after ``timeout`` seconds."""
        try:
            return self._free.get(timeout=timeout)
        except queue.Empty:
            return None

    def release(self, slot: int) -> None:
        self._free.put(slot)

    def ref(self, arr: np.ndarray) -> TextureRef | None:
        """The :class:`TextureRef` of ``arr`` if it is a contiguous view into a slot, else None."""
        if not arr.flags.c_contiguous:
            return None
        addr = int(arr.__array_interface__["data"][0])
        for k, base in enumerate(self._base):
            if base <= addr and addr + arr.nbytes <= base + self.capacity:
                return TextureRef(self._shm[k].name, addr - base, tuple(int(s) for s in arr.shape))
        return None

    def close(self) -> None:
        """Unmap and remove the blocks (views into them must be gone)."""
        self.views = []
        for shm in self._shm:
            with contextlib.suppress(BufferError):  # an array still maps it: unmapped at the process's end
                shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
        self._shm = []


_ATTACHED: dict[str, Any] = {}


def resolve(texture: Any) -> Any:
    """A writer process's read-only view of a :class:`TextureRef` (the slot mapped once per process);
    anything else as it is."""
    if not isinstance(texture, TextureRef):
        return texture
    buf = _ATTACHED.get(texture.name)
    if buf is None:
        buf = _ATTACHED[texture.name] = _map(texture.name)
    return np.ndarray(texture.shape, np.uint8, buffer=buf, offset=texture.offset)


def _map(name: str) -> Any:
    """The block ``name``, mapped read-only. On Linux straight from /dev/shm: attaching through
    ``SharedMemory`` registers the block with this process's resource tracker, which (Python < 3.13)
    removes it when a writer process that started its own tracker ends, under the worker's feet."""
    import mmap
    import os

    path = f"/dev/shm/{name.lstrip('/')}"
    if os.path.exists(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
    return shared_memory.SharedMemory(name=name).buf  # elsewhere: the portable way
