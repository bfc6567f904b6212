"""Robust image decoding with Pillow to ``(H, W, 3)`` uint8 RGB arrays.

Output coordinates follow the data contract: pixels *after* EXIF orientation, origin top-left.

Handled: JPEG (incl. CMYK/YCCK and grayscale), PNG (RGBA, LA, palette with transparency, 16-bit
grayscale), WebP, BMP, TIFF, GIF and other multi-frame files (first frame), 1-bit images.
Alpha is composited over ``background`` (white by default). 16-bit data is scaled to 8 bits
(``round(v / 257)``); 32-bit integer images (Pillow mode ``"I"``) are read as 16-bit data
(clipped to [0, 65535]) because that is how older Pillow versions and TIFF readers expose 16-bit
files; float images (mode ``"F"``) in [0, 1] are scaled by 255, others clipped to [0, 255].

Every failure raises :class:`ImageDecodeError` with a one-line message ``"<source>: <reason>"``.
Truncated files are refused (``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left ``False``), and so
are images larger than ``max_pixels``; that check uses the header only, before any pixel data
is decoded or allocated. Pillow's own process-wide guard (``PIL.Image.MAX_IMAGE_PIXELS``: a
warning above ~89 MP, an error above ~179 MP) still applies on top; raise it there to decode
larger images.
"""

from __future__ import annotations

import errno
import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from facefleet.io.read import MAX_FILE_BYTES

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "check_image_size",
    "decode_image",
    "probe_size",
    "read_image",
    "sniff_format",
]

DEFAULT_MAX_PIXELS = 100_000_000
"""Default decompression-bomb limit: 100 megapixels (a 10000 x 10000 image)."""

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class ImageDecodeError(ValueError):
    """An image could not be read or decoded. ``str(err)`` is ``"<source>: <reason>"``."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[str, str]]:  # picklable across processes
        return (type(self), (self.source, self.reason))


def sniff_format(data: bytes) -> str | None:
    """Format name guessed from the first bytes (JPEG, PNG, GIF, BMP, TIFF, WEBP) or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG, JPEG, GIF or BMP header without Pillow; None if unknown."""
    fmt = sniff_format(data)
    try:
        if fmt == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        if fmt == "JPEG":
            from facefleet.io.jpeg import parse_jpeg_header

            header = parse_jpeg_header(data)
            return (header.width, header.height) if header is not None else None
        if fmt == "GIF" and len(data) >= 10:
            w, h = struct.unpack("<HH", data[6:10])
            return int(w), int(h)
        if fmt == "BMP" and len(data) >= 26 and struct.unpack("<I", data[14:18])[0] >= 40:
            w, h = struct.unpack("<ii", data[18:26])
            return abs(int(w)), abs(int(h))
    except struct.error:
        return None
    return None


def check_image_size(source: str, width: int, height: int, max_pixels: int | None) -> None:
    """Raise :class:`ImageDecodeError` for zero-size or over-limit dimensions."""
    if width <= 0 or height <= 0:
        raise ImageDecodeError(source, f"zero-size image ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            source,
            f"image too large ({width}x{height} = {width * height / 1e6:.1f} megapixels > limit "
            f"{max_pixels / 1e6:.1f}; possible decompression bomb, raise max_pixels to allow it)",
        )


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB array."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im)
        if mode == "I":
            a = np.clip(a, 0, 65535)
        g = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # == round(v / 257)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        f = np.asarray(im, dtype=np.float32)
        finite = f[np.isfinite(f)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            f = f * 255.0
        g = np.clip(np.nan_to_num(f, nan=0.0), 0, 255).round().astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return np.asarray(Image.alpha_composite(base, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _reason_for(exc: BaseException, fmt: str | None) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = msg.lower()
    if "truncated" in low or "premature end" in low or "broken data stream" in low:
        return f"truncated file ({msg})"
    if isinstance(exc, UnidentifiedImageError):
        if fmt is not None:
            return f"truncated or corrupt {fmt} header"
        return "not an image or unknown format"
    if fmt is not None:
        return f"truncated or corrupt {fmt} data ({msg})"
    return f"cannot decode image ({msg})"


def decode_image(
    data: bytes | bytearray | memoryview,
    source: str,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Decode encoded image bytes to a ``(H, W, 3)`` uint8 RGB array (EXIF orientation applied).

    ``source`` names the input in error messages. ``max_pixels`` (None = unlimited) is checked
    from the header before decoding. Raises :class:`ImageDecodeError`.
    """
    source = str(source)
    if len(data) == 0:
        raise ImageDecodeError(source, "empty file (0 bytes)")
    buf = bytes(data)
    fmt = sniff_format(buf)
    try:
        im = Image.open(io.BytesIO(buf))  # lazy: reads the header only
    except Exception as exc:
        # Pillow refuses zero sizes and (above its own global limit) huge ones before we see the
        # size; word those from the header when we can read it.
        size = probe_size(buf)
        if size is not None:
            check_image_size(source, size[0], size[1], max_pixels)
        if isinstance(exc, Image.DecompressionBombError):
            raise ImageDecodeError(source, f"image too large; possible decompression bomb ({exc})") from exc
        raise ImageDecodeError(source, _reason_for(exc, fmt)) from exc
    with im:
        width, height = im.size
        check_image_size(source, width, height, max_pixels)
        if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped Pillow's global; refuse to be lax
            raise ImageDecodeError(source, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; refusing to decode")
        try:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            # Pillow's exif_transpose copies the whole image when there is nothing to do (most files)
            oriented = ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) in range(2, 9) else im
            rgb = _to_rgb(oriented if oriented is not None else im, background)
        except ImageDecodeError:
            raise
        except MemoryError as exc:
            raise ImageDecodeError(source, f"out of memory decoding {width}x{height} image") from exc
        except Exception as exc:
            raise ImageDecodeError(source, _reason_for(exc, fmt or im.format)) from exc
    if not rgb.flags.writeable or not rgb.flags.c_contiguous:
        rgb = np.array(rgb, dtype=np.uint8, order="C")
    return rgb


def _read_reason(exc: OSError) -> str:
    """Why :func:`~facefleet.io.read.read_source` refused or failed, in words (after the source)."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError) or exc.errno == errno.EISDIR:
        return "is a directory"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.EINVAL, errno.EFBIG):  # refused unread: the reason is the whole story
        return reason
    return f"cannot read file ({reason})"


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    max_bytes: int = MAX_FILE_BYTES,
) -> np.ndarray:
    """Read and decode an image file (local path or fsspec URL) to ``(H, W, 3)`` uint8 RGB.

    The bytes come from facefleet's one input reader, :func:`facefleet.io.read.read_source`: a regular
    file of at most ``max_bytes`` bytes (``[run] max_file_bytes``); a named pipe, a device or a larger
    file is refused unread, as every runner refuses it, with an :class:`ImageDecodeError` naming it."""
    from facefleet.io.read import read_source

    source = str(path) if isinstance(path, Path) else os.fspath(path)
    try:
        data = read_source(source, max_bytes)
    except OSError as exc:
        raise ImageDecodeError(source, _read_reason(exc)) from exc
    return decode_image(data, source, max_pixels=max_pixels, background=background)
