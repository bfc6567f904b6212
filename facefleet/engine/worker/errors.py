"""How a worker words and sorts failures: the manifest's error texts, their categories, and the
errors that are the worker's (OUT unwritable, a broken device) rather than an image's."""

from __future__ import annotations

import errno

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT})


class OutputError(OSError):
    """OUT cannot be written (disk full, read-only file system, permission)."""


def device_broken(e: BaseException) -> bool:
    """CUDA errors that poison the context (illegal address, launch failure, ECC...)."""
    name = type(e).__name__
    msg = str(e)
    return name == "AcceleratorError" or "CUDA error" in msg or "CUBLAS_STATUS" in msg or "cuDNN error" in msg


def error_text(e: BaseException) -> str:
    """The manifest's error text: the reason without the source (which has its own column)."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, str):
        return reason
    if isinstance(e, OSError) and e.strerror:
        return f"cannot read file ({e.strerror})"
    return f"{type(e).__name__}: {e}"


def error_kind(text: str) -> str:
    """A short category of an error text for the failed-by-reason table."""
    t = text.lower()
    for key, kind in (
        ("empty file", "empty"),
        ("truncated", "truncated"),
        ("too large", "too_large"),
        ("decompression bomb", "too_large"),
        ("megapixel", "too_large"),
        ("not an image", "not_an_image"),
        ("unknown format", "not_an_image"),
        ("not a regular file", "not_a_file"),
        ("file not found", "missing"),
        ("permission denied", "permission"),
        ("cannot read", "read_error"),
        ("out of device memory", "out_of_memory"),
        ("reconstruction failed", "pipeline_error"),
        ("cannot write", "write_error"),
        ("unit failed", "worker_crash"),
        ("corrupt", "corrupt"),
    ):
        if key in t:
            return kind
    return "decode_error"
