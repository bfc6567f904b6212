"""What comes into the service: bodies under a size limit, uploads streamed to disk, images checked from
their header, and input paths confined to the allowed roots.

:class:`BodyLimit` is ASGI middleware: it refuses a request whose ``Content-Length`` is over the route's
limit before reading it, and stops one that streams more than that (chunked bodies) as soon as it does,
so no request makes the server hold or spool more than the limit.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from facefleet.io.decode import ImageDecodeError, check_image_size, probe_size, sniff_format


class HttpError(Exception):
    """An error with its HTTP status, answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class BodyLimit:
    """ASGI middleware: bodies over ``limits[path prefix]`` bytes get 413 (the longest matching prefix
    wins; other paths get ``default``)."""

    def __init__(self, app: Any, limits: dict[str, int], default: int) -> None:
        self.app = app
        self.limits = sorted(limits.items(), key=lambda kv: -len(kv[0]))
        self.default = default

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits:
            if path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(send, BodyTooLarge(limit).message)
            return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:  # the app did not answer it (its HttpError handler does)
            if not started:
                await _too_large(send, e.message)


class BodyTooLarge(HttpError):
    """A body streamed past its limit (raised while the app reads it: its handler answers 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit / 2**20:.1f} MiB")


async def _too_large(send: Any, message: str) -> None:
    import orjson

    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def check_image_bytes(data: bytes, source: str, max_pixels: int) -> None:
    """Raise :class:`HttpError` 422 for bytes that are not an image of a known format, and for one whose
    header declares more than ``max_pixels`` pixels (a decompression bomb: refused before decoding)."""
    if not data:
        raise HttpError(422, f"{source}: empty body: send the image's bytes")
    if sniff_format(data) is None:
        raise HttpError(422, f"{source}: not an image or unknown format (JPEG, PNG, WebP, BMP, TIFF, GIF)")
    size = probe_size(data)
    if size is not None:
        try:
            check_image_size(source, size[0], size[1], max_pixels)
        except ImageDecodeError as e:
            raise HttpError(422, str(e)) from None


_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_filename(name: str, index: int) -> str:
    """A file name for an upload: the client's base name without path or odd characters (never empty,
    never a dot file), prefixed by its index so two uploads of the same name stay two files."""
    base = os.path.basename(name.replace("\\", "/")).strip()
    base = _UNSAFE.sub("_", base).lstrip(".") or "upload"
    return f"{index:05d}_{base[:120]}"


async def save_stream(chunks: AsyncIterator[bytes], path: Path) -> int:
    """Write an upload's chunks to ``path`` as they arrive (never whole in memory); returns its size."""
    size = 0
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        async for chunk in chunks:
            f.write(chunk)
            size += len(chunk)
    os.replace(tmp, path)
    return size


def confine(spec: str, roots: Sequence[str]) -> str:
    """``spec`` (a local path or a URL like ``s3://bucket/prefix``) when it lies under one of ``roots``,
    else :class:`HttpError` 403. Local paths are resolved (``..`` and every symlink followed) before the
    check, so neither a traversal nor a link out of a root gets through; the resolved path is returned.
    URLs must start with a root URL at a ``/`` boundary and hold no ``..`` segment."""
    if not roots:
        raise HttpError(403, "this server reads no paths (no [service] roots are set): upload the files")
    if "://" in spec:
        parts = spec.split("://", 1)[1].split("/")
        if ".." in parts or "." in parts:
            raise HttpError(403, f"{spec}: '..' is not allowed in a URL")
        for root in roots:
            if "://" in root and (spec == root or spec.startswith(root.rstrip("/") + "/")):
                return spec
        raise HttpError(403, f"{spec}: outside the folders this server may read")
    real = os.path.realpath(spec)
    for root in roots:
        if "://" in root:
            continue
        r = os.path.realpath(root)
        if real == r or real.startswith(r.rstrip(os.sep) + os.sep):
            if not os.path.exists(real):
                raise HttpError(404, f"{spec}: no such file or folder")
            return real
    raise HttpError(403, f"{spec}: outside the folders this server may read")
