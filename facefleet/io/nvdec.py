"""Frame-exact video decoding on NVIDIA GPUs (NVDEC), frames delivered as torch tensors on the device.

:func:`read_frames_nvdec` decodes a :class:`~facefleet.sources.items.FrameRange` with FFmpeg's NVDEC
hwaccel through PyAV (``av.open(..., hwaccel=HWAccel("cuda", is_hw_owned=True))``). The decoded
pictures stay in device memory: PyAV (>= 16) exports the NV12 planes of a CUDA hw frame through
DLPack (``VideoFrame.planes[i].__dlpack__()``), which torch wraps without a copy, and
:func:`nv12_to_rgb` turns them into a ``(3, H, W)`` uint8 RGB tensor with a few elementwise kernels.
Nothing goes through host memory but the compressed packets.

Semantics are those of :func:`facefleet.io.video.read_frames`: frame ``i`` is the ``i``-th frame of
the first video stream in presentation order (the same packet index), the reader seeks to the
keyframe at or before ``item.start``, drops the frames before it, stops after the last one, and
raises :class:`~facefleet.io.video.VideoError` when a frame is missing. Rotation is not applied
(``VideoInfo.rotation`` says what a player would do), as in ``read_frames``.

Colour: limited-range ("MPEG") or full-range ("JPEG", by the frame's ``color_range``) Y'CbCr with the
BT.709 matrix when the frame's colourspace says BT.709, BT.2020 for BT.2020, else BT.601 (FFmpeg's
swscale, which ``read_frames`` uses, also takes BT.601 for an unspecified colourspace). Chroma is
upsampled by repetition. Against PyAV's ``to_ndarray(format="rgb24")`` of the same frame the result
differs by about 1 level on average (swscale's default fast path rounds lower) and at most a few levels
(tests/test_io_nvdec.py states the tolerance); 10-bit streams (P010) are reduced to 8 bits.

:func:`frame_reader` picks the reader: NVDEC when ``device`` is a CUDA device, FFmpeg has the CUDA
hwaccel and the stream's codec can be opened with it; otherwise ``read_frames`` on the CPU, each frame
copied to ``device``. Frames that FFmpeg's NVDEC decoder hands back in system memory (a codec or
profile NVDEC does not take, with ``allow_software_fallback``) are converted by swscale exactly as
``read_frames`` does and copied to the device. :func:`read_batches` groups frames into
``(B, 3, H, W)`` batches.

>>> for i, t, rgb in frame_reader(FrameRange("clip.mp4", 0, 300), "cuda"):  # doctest: +SKIP
...     rgb.shape, rgb.device  # (3, H, W) uint8 on cuda:0
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Generator, Iterator
from typing import Any

import torch
from torch import Tensor

from facefleet.io.video import VideoError, _av, _index, read_frames, walk_range
from facefleet.sources.items import FrameRange

__all__ = [
    "BACKENDS",
    "NvdecUnavailable",
    "choose_backend",
    "frame_reader",
    "nv12_to_rgb",
    "nvdec_available",
    "read_batches",
    "read_frames_nvdec",
    "yuv_matrix",
]

BACKENDS = ("auto", "nvdec", "cpu")

# (Kr, Kb) of the Y'CbCr matrices; Kg = 1 - Kr - Kb
_KRKB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}
# AVColorSpace values (libavutil/pixfmt.h)
_AVCOL_SPC_BT709 = 1
_AVCOL_SPC_BT2020 = (9, 10)
_AVCOL_RANGE_JPEG = 2


class NvdecUnavailable(RuntimeError):
    """NVDEC cannot decode this file here (no CUDA, FFmpeg without the CUDA hwaccel, no driver
    library, or a hw frame PyAV cannot export): :func:`frame_reader` falls back to the CPU."""


def yuv_matrix(colorspace: int | None) -> str:
    """The Y'CbCr matrix of an ``AVColorSpace`` value: "bt709", "bt2020" or "bt601" (the rest, and
    unspecified, as swscale does)."""
    if colorspace == _AVCOL_SPC_BT709:
        return "bt709"
    if colorspace in _AVCOL_SPC_BT2020:
        return "bt2020"
    return "bt601"


def nv12_to_rgb(
    y: Tensor,
    uv: Tensor,
    *,
    matrix: str = "bt601",
    full_range: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """NV12 planes -> ``(3, H, W)`` uint8 RGB on their device.

    ``y``: ``(H, W)`` luma; ``uv``: ``(ceil(H/2), ceil(W/2), 2)`` interleaved Cb, Cr (strided views of
    a pitched frame are fine). uint8, or uint16 with the sample in the high bits (P010/P016: reduced to
    8 bits). ``matrix``: "bt601", "bt709" or "bt2020"; ``full_range``: JPEG range (0-255) rather than
    limited (16-235 luma, 16-240 chroma). ``out``: a ``(3, H, W)`` uint8 tensor to write into.
    """
    if y.ndim != 2 or uv.ndim != 3 or uv.shape[-1] != 2:
        raise ValueError(
            f"nv12_to_rgb needs y (H, W) and uv (H/2, W/2, 2), got {tuple(y.shape)}, {tuple(uv.shape)}"
        )
    kr, kb = _KRKB[matrix]
    kg = 1.0 - kr - kb
    h, w = y.shape
    scale = 1.0 / 256.0 if y.dtype != torch.uint8 else 1.0
    yf = y.to(torch.float32)
    c = uv.to(torch.float32).permute(2, 0, 1)  # (2, h2, w2)
    h2, w2 = c.shape[1:]
    c = c[:, :, None, :, None].expand(2, h2, 2, w2, 2).reshape(2, 2 * h2, 2 * w2)[:, :h, :w]
    if scale != 1.0:
        yf = yf * scale
        c = c * scale
    if full_range:
        ys, cs, y0 = 1.0, 1.0, 0.0
    else:
        ys, cs, y0 = 255.0 / 219.0, 255.0 / 224.0, 16.0
    yl = (yf - y0) * ys
    cb, cr = (c[0] - 128.0) * cs, (c[1] - 128.0) * cs
    r = yl + (2.0 - 2.0 * kr) * cr
    g = yl - (kb * (2.0 - 2.0 * kb) / kg) * cb - (kr * (2.0 - 2.0 * kr) / kg) * cr
    b = yl + (2.0 - 2.0 * kb) * cb
    rgb = torch.stack([r, g, b]).round_().clamp_(0.0, 255.0)
    if out is None:
        return rgb.to(torch.uint8)
    if out.shape != (3, h, w) or out.dtype != torch.uint8:
        raise ValueError(f"out must be (3, {h}, {w}) uint8, got {tuple(out.shape)} {out.dtype}")
    return out.copy_(rgb)


@functools.lru_cache(maxsize=1)
def _ffmpeg_has_cuda() -> bool:
    try:
        from av.codec.hwaccel import hwdevices_available

        return "cuda" in hwdevices_available()
    except Exception:
        return False


def nvdec_available(device: str | torch.device | None = None) -> bool:
    """True when ``device`` (default: the current CUDA device) is a CUDA device and PyAV's FFmpeg has
    the CUDA hwaccel. Whether the driver's NVDEC library loads, and takes the codec, is known only
    once a file is opened (:class:`NvdecUnavailable`)."""
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    return _ffmpeg_has_cuda()


def choose_backend(device: str | torch.device | None, backend: str = "auto") -> str:
    """The reader that :func:`frame_reader` tries first for ``device`` and ``backend``: "nvdec" or "cpu"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "cpu":
        return "cpu"
    ok = nvdec_available(device)
    if backend == "nvdec" and not ok:
        raise NvdecUnavailable(f"NVDEC is not available for device {device!r} (CUDA and PyAV's CUDA hwaccel)")
    return "nvdec" if ok else "cpu"


def _resolve(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _open_hw(path: str, dev: torch.device) -> Any:
    """A container of ``path`` whose first video stream decodes with NVDEC on ``dev``."""
    av = _av()
    from av.codec.hwaccel import HWAccel

    hw = HWAccel(
        device_type="cuda", device=str(dev.index or 0), allow_software_fallback=True, is_hw_owned=True
    )
    try:
        container = av.open(path, hwaccel=hw)
    except av.error.FFmpegError as e:  # the file itself was read by _index already: the device failed
        raise NvdecUnavailable(f"{path}: cannot open the CUDA hwaccel ({e})") from e
    except NotImplementedError as e:  # "No supported hardware config" for this codec
        raise NvdecUnavailable(f"{path}: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    cc = container.streams.video[0].codec_context
    if not getattr(cc, "is_hwaccel", False):
        container.close()
        raise NvdecUnavailable(f"{path}: FFmpeg has no NVDEC path for codec {cc.name}")
    return container


def _dlpack(plane: Any) -> Tensor:
    # the capsule, not the plane: torch.from_dlpack(plane) would pass a stream, which PyAV refuses
    return torch.utils.dlpack.from_dlpack(plane.__dlpack__())


def _hw_frame_to_rgb(frame: Any, dev: torch.device, out: Tensor | None) -> Tensor:
    """A frame from the NVDEC decoder -> (3, H, W) uint8 on ``dev``."""
    if frame.format.name != "cuda":  # the decoder fell back to software for this stream
        rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).to(dev).permute(2, 0, 1)
        return rgb.contiguous() if out is None else out.copy_(rgb)
    try:
        y, uv = _dlpack(frame.planes[0]), _dlpack(frame.planes[1])
    except (NotImplementedError, TypeError, ValueError) as e:
        sw = frame.sw_format.name if frame.sw_format is not None else "?"
        raise NvdecUnavailable(f"cannot export an NVDEC frame ({sw}) to torch: {e}") from e
    if y.device != dev:
        raise NvdecUnavailable(f"NVDEC frame on {y.device}, wanted {dev}")
    # FFmpeg copies decoded pictures into the frame on the legacy default stream; order our kernels
    # after it, and its next copy into this (pooled) buffer after our reads.
    cur, base = torch.cuda.current_stream(dev), torch.cuda.default_stream(dev)
    if cur != base:
        cur.wait_stream(base)
    rgb = nv12_to_rgb(
        y,
        uv,
        matrix=yuv_matrix(frame.colorspace),
        full_range=frame.color_range == _AVCOL_RANGE_JPEG,
        out=out,
    )
    if cur != base:
        base.wait_stream(cur)
    return rgb


def read_frames_nvdec(
    item: FrameRange, device: str | torch.device | None = "cuda"
) -> Generator[tuple[int, float, Tensor], None, None]:
    """Frames ``item.start .. item.stop - 1`` decoded by NVDEC: ``(index, pts_seconds, (3, H, W) uint8
    RGB on device)``, the frames of :func:`facefleet.io.video.read_frames` (see the module docstring).

    Raises :class:`NvdecUnavailable` (before the first frame) when NVDEC cannot take the file here,
    :class:`~facefleet.io.video.VideoError` for the errors ``read_frames`` raises.
    """
    dev = _resolve(device)
    if not nvdec_available(dev):
        raise NvdecUnavailable(f"NVDEC is not available for {dev} (CUDA and PyAV's CUDA hwaccel)")
    yield from walk_range(item, lambda p: _open_hw(p, dev), lambda f: _hw_frame_to_rgb(f, dev, None))


def _cpu_frames(item: FrameRange, dev: torch.device) -> Iterator[tuple[int, float, Tensor]]:
    for i, t, rgb in read_frames(item):
        x = torch.from_numpy(rgb)
        if dev.type != "cpu":
            x = x.to(dev)
        yield i, t, x.permute(2, 0, 1).contiguous()


def frame_reader(
    item: FrameRange | str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    backend: str = "auto",
) -> Iterator[tuple[int, float, Tensor]]:
    """``(index, pts_seconds, (3, H, W) uint8 RGB on device)`` for each frame of ``item`` (a whole
    file when given a path), by NVDEC where it can (``backend="auto"``), else ``read_frames`` on the
    CPU and a copy to ``device``. ``device``: None/"auto" (CUDA when present), "cpu", "cuda[:N]".
    ``backend="nvdec"`` raises :class:`NvdecUnavailable` instead of falling back; "cpu" never tries it.
    """
    if not isinstance(item, FrameRange):
        p = os.fspath(item)
        item = FrameRange(source=p, start=0, count=len(_index(p).pts))
    dev = _resolve(device)
    if choose_backend(dev, backend) == "nvdec":
        gen = read_frames_nvdec(item, dev)
        try:
            first = next(gen)
        except NvdecUnavailable as e:
            if backend == "nvdec":
                raise
            gen.close()
            # once per message (the warnings module's default): a run that silently decodes on the CPU
            # is several times slower
            warnings.warn(f"NVDEC unavailable, decoding on the CPU: {e}", RuntimeWarning, stacklevel=2)
        else:
            yield first
            yield from gen
            return
    yield from _cpu_frames(item, dev)


def read_batches(
    item: FrameRange | str | os.PathLike[str],
    device: str | torch.device | None = None,
    batch_size: int = 32,
    *,
    backend: str = "auto",
) -> Iterator[tuple[list[int], list[float], Tensor]]:
    """:func:`frame_reader` in batches: ``(indices, times, (B, 3, H, W) uint8)``, ``B <= batch_size``
    (the last batch is shorter, and so is one before a change of frame size). Each batch is a new
    tensor, the frames copied into it on their device."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    idx: list[int] = []
    times: list[float] = []
    buf: Tensor | None = None
    for i, t, rgb in frame_reader(item, device, backend=backend):
        if buf is None or buf.shape[1:] != rgb.shape:
            if idx:  # a size change mid-stream: flush what is there
                assert buf is not None
                yield idx, times, buf[: len(idx)]
                idx, times = [], []
            buf = torch.empty((batch_size, *rgb.shape), dtype=torch.uint8, device=rgb.device)
        buf[len(idx)].copy_(rgb)
        idx.append(i)
        times.append(t)
        if len(idx) == batch_size:
            yield idx, times, buf
            idx, times, buf = [], [], None
    if idx and buf is not None:
        yield idx, times, buf[: len(idx)]
