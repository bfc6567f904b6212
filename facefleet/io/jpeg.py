"""Cheap JPEG header parsing (size, frame type, EXIF orientation) without decoding pixels."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["JpegHeader", "parse_jpeg_header"]

# SOF markers (frame headers). 0xC4 (DHT), 0xC8 (JPG), 0xCC (DAC) are not frames.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_NVJPEG_SOF = frozenset({0xC0, 0xC1, 0xC2})  # Huffman baseline, extended, progressive


@dataclass(frozen=True)
class JpegHeader:
    """What the JPEG header says, read without decoding pixels."""

    width: int
    height: int
    components: int
    precision: int
    sof: int  # frame marker byte, e.g. 0xC0 baseline, 0xC2 progressive
    orientation: int  # EXIF orientation 1..8 (1 when absent or invalid)
    complete: bool  # ends with the EOI marker (a cheap truncation check)

    @property
    def nvjpeg_ok(self) -> bool:
        return self.complete and self.precision == 8 and self.components in (1, 3) and self.sof in _NVJPEG_SOF


def _exif_orientation(tiff: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 1 if absent/invalid."""
    if len(tiff) < 8:
        return 1
    order = tiff[:2]
    if order == b"II":
        e = "<"
    elif order == b"MM":
        e = ">"
    else:
        return 1
    if struct.unpack(e + "H", tiff[2:4])[0] != 42:
        return 1
    ifd = struct.unpack(e + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    count = struct.unpack(e + "H", tiff[ifd : ifd + 2])[0]
    for k in range(count):
        off = ifd + 2 + 12 * k
        if off + 12 > len(tiff):
            break
        tag, typ = struct.unpack(e + "HH", tiff[off : off + 4])
        if tag == 0x0112:
            if typ == 3:  # SHORT
                value = struct.unpack(e + "H", tiff[off + 8 : off + 10])[0]
            elif typ == 4:  # LONG (non-standard but seen in the wild)
                value = struct.unpack(e + "I", tiff[off + 8 : off + 12])[0]
            else:
                return 1
            return int(value) if 1 <= value <= 8 else 1
    return 1


def parse_jpeg_header(data: bytes) -> JpegHeader | None:
    """Parse SOI..SOS of a JPEG for size, components, frame type and EXIF orientation.

    Returns None when ``data`` is not a well-formed JPEG header (the caller falls back to Pillow,
    which words the error).
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    orientation = 1
    frame: tuple[int, int, int, int, int] | None = None
    while i < n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):  # EOI / start of scan: header over
            break
        if i + 2 > n:
            return None
        length = (data[i] << 8) | data[i + 1]
        if length < 2 or i + length > n:
            return None
        payload = data[i + 2 : i + length]
        if marker in _SOF_MARKERS and len(payload) >= 6:
            precision = payload[0]
            height, width = struct.unpack(">HH", payload[1:5])
            frame = (width, height, payload[5], precision, marker)
        elif marker == 0xE1 and payload.startswith(b"Exif\x00\x00") and orientation == 1:
            try:
                orientation = _exif_orientation(payload[6:])
            except struct.error:
                orientation = 1
        i += length
    if frame is None:
        return None
    width, height, comps, precision, sof = frame
    complete = data.rstrip(b"\x00")[-2:] == b"\xff\xd9"
    return JpegHeader(width, height, comps, precision, sof, orientation, complete)
