"""Reading an input's bytes safely: only regular files (a named pipe or a device would block its
reader forever) and none larger than a cap (a huge file would be read whole into memory), from a
local path, a ``file://`` URL or an fsspec URL. Errors are ``OSError`` whose text says why (the
manifest's error text)."""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any

MAX_FILE_BYTES = 256 << 20  # default of [run] max_file_bytes

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def read_source(source: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a local file, ``file://`` URL or fsspec URL, if it is a regular file of at most
    ``max_bytes`` bytes; else an ``OSError`` whose text says why (the manifest's error).

    A local file is opened without blocking (a named pipe would wait for a writer forever) and
    checked on its open descriptor (no swap between the check and the read); a file that grows past
    the cap while it is read is refused too."""
    from facefleet.io.discover import is_url

    if is_url(source) and not source.lower().startswith("file://"):
        return _read_url(source, max_bytes)
    path = source
    if source.lower().startswith("file://"):
        from urllib.parse import unquote, urlparse

        path = unquote(urlparse(source).path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
            raise OSError(errno.EINVAL, f"not a regular file: {kind}", source)
        _check_size(st.st_size, max_bytes, source)
        # read(n) allocates n bytes up front: the size it has (one byte more shows it grew)
        data = fh.read(st.st_size + 1)
        if len(data) > st.st_size:  # growing while read: up to the cap
            data += fh.read(max_bytes + 1 - len(data))
    _check_size(len(data), max_bytes, source)
    return data


def _read_url(url: str, max_bytes: int) -> bytes:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if fs.isdir(path):
        raise OSError(errno.EINVAL, "not a regular file: a directory", url)
    size = fs.size(path)
    if size is not None:
        _check_size(int(size), max_bytes, url)
    with fs.open(path, "rb") as fh:
        data = bytes(fh.read(max_bytes + 1))
    _check_size(len(data), max_bytes, url)
    return data


def _check_size(size: int, max_bytes: int, source: str) -> None:
    if size > max_bytes:
        raise OSError(
            errno.EFBIG,
            f"file too large: {size:,} bytes or more, the limit is {max_bytes:,} ([run] max_file_bytes)",
            source,
        )


def read_file(path: str, max_bytes: int = MAX_FILE_BYTES) -> tuple[Any, float]:
    """A file's bytes (or the exception reading it raised) and the seconds it took."""
    t0 = time.perf_counter()
    try:
        data: Any = read_source(path, max_bytes)
    except Exception as e:
        data = e
    return data, time.perf_counter() - t0
