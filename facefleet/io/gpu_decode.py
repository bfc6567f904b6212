"""Batched image decoding straight to device tensors, with nvJPEG on CUDA.

:func:`decode_batch` turns encoded blobs into ``(3, H, W)`` uint8 RGB tensors on ``device``
(EXIF orientation applied, like :func:`facefleet.io.decode.decode_image`):

- on CUDA with torchvision importable, plain 8-bit baseline/progressive JPEGs (1 or 3 components,
  complete up to the EOI marker, within ``max_pixels``) are decoded in one batched
  ``torchvision.io.decode_jpeg(..., device=cuda)`` call (nvJPEG). The EXIF orientation is parsed
  from the APP1 segment without decoding pixels and applied on the GPU with flips/transposes;
- everything else (PNG, WebP..., CMYK, 12-bit or arithmetic-coded JPEGs, files nvJPEG rejects,
  no CUDA, no torchvision) is decoded per file on the CPU with Pillow and copied to ``device``.

Errors are returned in place (an :class:`ImageDecodeError` in the output list), never raised,
so one bad file does not sink a batch. torchvision is imported lazily; this module imports
without it.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Sequence

import torch

from facefleet.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, check_image_size, decode_image
from facefleet.io.jpeg import JpegHeader, parse_jpeg_header

__all__ = ["JpegHeader", "apply_exif_orientation", "decode_batch", "nvjpeg_available", "parse_jpeg_header"]


def apply_exif_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to ``(..., H, W)`` so it displays upright.

    Same result as ``PIL.ImageOps.exif_transpose``: 2 mirror, 3 rotate 180, 4 flip vertical,
    5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    """
    h, w = image.dim() - 2, image.dim() - 1
    if orientation == 2:
        return image.flip(w)
    if orientation == 3:
        return image.flip((h, w))
    if orientation == 4:
        return image.flip(h)
    if orientation == 5:
        return image.transpose(h, w)
    if orientation == 6:
        return image.transpose(h, w).flip(w)
    if orientation == 7:
        return image.transpose(h, w).flip((h, w))
    if orientation == 8:
        return image.transpose(h, w).flip(h)
    return image


JpegBatchDecoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


@functools.lru_cache(maxsize=1)
def _torchvision_decoder() -> JpegBatchDecoder | None:
    """``decode(list of 1-D uint8 CPU tensors, device) -> list of (C, H, W)`` via torchvision, or None."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # not installed, or a broken build without the image extension
        return None

    def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return decode


def nvjpeg_available(device: torch.device | str) -> bool:
    """True when ``device`` is CUDA and torchvision (hence nvJPEG decoding) is importable."""
    dev = torch.device(device)
    return dev.type == "cuda" and torch.cuda.is_available() and _torchvision_decoder() is not None


_warned: set[str] = set()
# torchvision keeps one nvJPEG decoder per process; engine workers decode batches from several
# threads, so calls are serialised (a batch of 128 1080p JPEGs takes ~25 ms on an H100).
_NVJPEG_LOCK = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    """A slow path taken on a GPU is worth one line on stderr per process (throughput depends on it)."""
    if key not in _warned:
        _warned.add(key)
        print(f"facefleet: {message}", file=sys.stderr)


def _nvjpeg_decode(
    decoder: JpegBatchDecoder, blobs: Sequence[bytes], device: torch.device
) -> list[torch.Tensor | None]:
    """One batched call; if it fails, retry file by file. None marks a file the decoder refused."""
    inputs = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    results: list[torch.Tensor | None]
    try:
        with _NVJPEG_LOCK:
            results = list(decoder(inputs, device))
        if len(results) != len(inputs):
            raise RuntimeError("decoder returned a wrong number of images")
    except Exception as exc:
        _warn_once(
            "batch", f"batched nvJPEG decode failed ({type(exc).__name__}: {exc}); decoding file by file"
        )
        results = []
        for t in inputs:
            try:
                with _NVJPEG_LOCK:
                    results.append(decoder([t], device)[0])
            except Exception:
                results.append(None)
    fixed: list[torch.Tensor | None] = []
    for r in results:
        if r is not None and r.shape[0] == 1:  # grayscale despite mode=RGB
            r = r.expand(3, -1, -1)
        fixed.append(r)
    return fixed


def _cpu_decode(data: bytes, source: str, device: torch.device, max_pixels: int | None) -> torch.Tensor:
    rgb = decode_image(data, source, max_pixels=max_pixels)
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1).contiguous()


def decode_batch(
    blobs: Sequence[bytes],
    sources: Sequence[str],
    device: torch.device | str,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    use_nvjpeg: bool = True,
    jpeg_decoder: JpegBatchDecoder | None = None,
) -> list[torch.Tensor | ImageDecodeError]:
    """Decode encoded images to ``(3, H, W)`` uint8 RGB tensors on ``device``, EXIF-oriented.

    Returns one entry per blob, in order: a tensor, or the :class:`ImageDecodeError` for that
    file. ``use_nvjpeg=False`` forces the Pillow path even on CUDA. ``jpeg_decoder`` replaces the
    torchvision/nvJPEG batch decoder (``decode(list of 1-D uint8 CPU tensors, device) -> list of
    (C, H, W) tensors``), e.g. for another backend or for tests; when given it is used on any device.
    """
    if len(blobs) != len(sources):
        raise ValueError(f"decode_batch: {len(blobs)} blobs but {len(sources)} sources")
    dev = torch.device(device)
    out: list[torch.Tensor | ImageDecodeError | None] = [None] * len(blobs)
    decoder = jpeg_decoder
    if decoder is None and use_nvjpeg and nvjpeg_available(dev):
        decoder = _torchvision_decoder()
    gpu = decoder is not None
    gpu_items: list[tuple[int, int]] = []  # (index, orientation)
    cpu_items: list[int] = []
    for i, (data, source) in enumerate(zip(blobs, sources, strict=True)):
        if gpu and len(data) > 0:
            header = parse_jpeg_header(data)
            if header is not None and header.nvjpeg_ok:
                try:
                    check_image_size(str(source), header.width, header.height, max_pixels)
                except ImageDecodeError as exc:
                    out[i] = exc
                    continue
                gpu_items.append((i, header.orientation))
                continue
        cpu_items.append(i)
    if gpu_items:
        assert decoder is not None
        decoded = _nvjpeg_decode(decoder, [blobs[i] for i, _ in gpu_items], dev)
        for (i, orientation), tensor in zip(gpu_items, decoded, strict=True):
            if tensor is None:
                cpu_items.append(i)
            else:
                out[i] = apply_exif_orientation(tensor, orientation).contiguous()
    if gpu and cpu_items:
        _warn_once(
            "cpu",
            f"{len(cpu_items)} of {len(blobs)} files of a batch decoded by Pillow on the CPU, not nvJPEG",
        )
    for i in sorted(cpu_items):
        try:
            out[i] = _cpu_decode(blobs[i], str(sources[i]), dev, max_pixels)
        except ImageDecodeError as exc:
            out[i] = exc
    result: list[torch.Tensor | ImageDecodeError] = []
    for item in out:
        assert item is not None
        result.append(item)
    return result
