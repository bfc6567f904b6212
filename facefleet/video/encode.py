"""H.264 encoding of one chunk of a video into a segment file (PyAV, libx264 on CPU cores).

A video's chunks are encoded independently (one :class:`SegmentEncoder` per chunk, e.g. one per
worker process or thread, ``threads=1`` each) with identical settings, and
:func:`facefleet.video.mux.mux_video` joins their packets by stream copy afterwards.

Segments are MP4 files whose video stream keeps the source's time base, and every frame keeps its
source pts, so the joined video has the source's timing exactly (variable frame rates included):
MP4 stores a track's time base exactly (FFmpeg multiplies a coarse one by 2 until it reaches 10 000
ticks a second, an exact rescaling) and its B-frame reordering as signed composition offsets, so
pts and dts read back as written. Each segment starts with an IDR frame and x264's GOPs are closed,
so a segment decodes on its own and the join needs no re-encoding. Every segment of a video must be
encoded with the same settings (size, time base, rate, preset, crf, matrix): their SPS/PPS must be
identical to sit in one MP4 track (:func:`~facefleet.video.mux.mux_video` checks).

Input: 4:2:0 planes from :func:`facefleet.video.render.rgb_to_yuv420p` (host numpy) or
``av.VideoFrame``; no other conversion happens here. The output is tagged limited range with the
matrix the planes were made with.

Needs PyAV (``pip install facefleet[video]``).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from facefleet.io.video import VideoError, _av, _open

__all__ = ["SegmentEncoder", "SourceVideo", "pts_of", "source_video"]

# FFmpeg's AVColorSpace values of the matrices rgb_to_yuv420p writes
_COLORSPACE = {"bt601": 6, "bt709": 1}  # SMPTE 170M (= BT.601 525), BT.709
_RANGE_MPEG = 1  # limited ("tv") range


@dataclass(frozen=True, slots=True)
class SourceVideo:
    """What a segment needs from its source: the video stream's ``time_base`` (frames keep their pts
    in it), average ``fps`` (x264's rate control and the stream's nominal rate) and the ``matrix`` PyAV
    decodes it to RGB with (``"bt709"`` when the stream is tagged BT.709, else ``"bt601"``: swscale's
    default), which :func:`facefleet.video.render.rgb_to_yuv420p` should use to give back its colours."""

    path: str
    time_base: Fraction
    fps: Fraction
    matrix: str


def source_video(path: str | os.PathLike[str]) -> SourceVideo:
    """:class:`SourceVideo` of ``path``'s first video stream (reads the headers only)."""
    p = os.fspath(path)
    container = _open(p)
    try:
        stream = container.streams.video[0]
        tb = stream.time_base
        if tb is None:
            raise VideoError(f"{p}: the video stream has no time base")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = Fraction(rate) if rate else Fraction(25)
        matrix = "bt709" if int(stream.codec_context.colorspace or 0) == 1 else "bt601"
        return SourceVideo(path=p, time_base=Fraction(tb), fps=fps, matrix=matrix)
    finally:
        container.close()


def pts_of(seconds: float, time_base: Fraction) -> int:
    """The pts (in ``time_base`` ticks) of a frame time in seconds, as :func:`facefleet.io.video.read_frames`
    yields it (``float(pts * time_base)``): exact for any pts below 2**50."""
    return round(Fraction(seconds) / Fraction(time_base))


def _track_timescale(time_base: Fraction) -> int:
    """The timescale FFmpeg's MP4 muxer gives a video track of stream time base ``time_base``."""
    scale = Fraction(time_base).denominator
    while scale < 10000:
        scale *= 2
    return scale


def _mp4_options(path: Path, timescales: Sequence[int]) -> dict[str, str]:
    """Muxer options that keep every track's start exact in an MP4/MOV file.

    A track that starts after 0 gets an empty edit, whose length is counted in the movie timescale
    (1000 by default: a start of 46614/11988 s would read back as 46609): use the least common
    multiple of the tracks' timescales (or the first's when that does not fit 31 bits)."""
    if path.suffix.lower() not in (".mp4", ".mov", ".m4v"):
        return {}
    scale = 1
    for t in timescales:
        scale = math.lcm(scale, int(t))
    if scale >= 2**31:
        scale = int(timescales[0])
    return {"movie_timescale": str(scale)}


def _temp_beside(dest: Path) -> Path:
    """A fresh temporary name next to ``dest`` with the same suffix (FFmpeg picks the format from it)."""
    return dest.with_name(f".{dest.stem}.{secrets.token_hex(4)}.tmp{dest.suffix}")


def _commit(tmp: Path, dest: Path) -> None:
    """fsync ``tmp``, rename it over ``dest`` and fsync the directory (atomic replace)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    if os.name == "posix":
        try:
            dfd = os.open(dest.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)


class SegmentEncoder:
    """Encode the frames of one chunk into ``path`` (MP4), written atomically on :meth:`close`.

    >>> with SegmentEncoder("seg0.mp4", time_base=src.time_base, fps=src.fps) as enc:  # doctest: +SKIP
    ...     for planes, pts in zip(yuv_batch, pts_batch):
    ...         enc.write(planes, pts)

    ``time_base``: the source video stream's (frames keep their source pts in it); ``fps``: its
    average rate; ``preset`` / ``crf``: x264's (``[video]`` ``preset`` / ``crf``); ``threads``: x264
    threads of this encoder (1: one encoder per core, chunks encoded in parallel by several encoders);
    ``matrix``: the Y'CbCr matrix the planes were made with (tags the stream); ``x264_params``: extra
    ``x264-params`` (``key=value``), identical for every segment of a video. The frame size comes from
    the first frame. Leaving the ``with`` block by an exception (or :meth:`abort`) removes the partial
    file and leaves ``path`` as it was.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        time_base: Fraction,
        fps: Fraction | None = None,
        preset: str = "veryfast",
        crf: int = 20,
        threads: int = 1,
        matrix: str = "bt601",
        x264_params: Mapping[str, str] | None = None,
    ) -> None:
        if matrix not in _COLORSPACE:
            raise ValueError(
                f"SegmentEncoder: matrix must be one of {', '.join(_COLORSPACE)}, got {matrix!r}"
            )
        if threads < 0:
            raise ValueError(f"SegmentEncoder: threads must be >= 0 (0: x264 chooses), got {threads}")
        self.path = Path(os.fspath(path))
        if self.path.suffix.lower() not in (".mp4", ".mov", ".m4v"):
            raise ValueError(f"SegmentEncoder: {self.path}: segments are MP4 files (.mp4)")
        self.time_base = Fraction(time_base)
        self.fps = Fraction(fps) if fps else None
        self.preset, self.crf, self.threads, self.matrix = preset, int(crf), int(threads), matrix
        self.x264_params = dict(x264_params or {})
        self.frames = 0
        self.width = self.height = 0
        self._av = _av()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temp_beside(self.path)
        self._container: Any = None
        self._stream: Any = None
        self._last_pts: int | None = None
        self._done = False

    @classmethod
    def for_source(
        cls,
        path: str | os.PathLike[str],
        source: SourceVideo | str | os.PathLike[str],
        config: Any = None,
        *,
        threads: int = 1,
    ) -> SegmentEncoder:
        """An encoder with ``source``'s time base, rate and matrix and ``config``'s (a
        :class:`facefleet.config.VideoConfig`, default: its defaults) preset and crf."""
        src = source if isinstance(source, SourceVideo) else source_video(source)
        if config is None:
            from facefleet.config.sections import VideoConfig

            config = VideoConfig()
        return cls(
            path,
            time_base=src.time_base,
            fps=src.fps,
            preset=config.preset,
            crf=config.crf,
            threads=threads,
            matrix=src.matrix,
        )

    def _start(self, width: int, height: int) -> None:
        av = self._av
        self.width, self.height = width, height
        options = _mp4_options(self.path, [_track_timescale(self.time_base)])
        self._container = av.open(str(self._tmp), "w", options=options)
        try:
            stream = self._container.add_stream("libx264", rate=self.fps or Fraction(25))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.time_base = self.time_base
            cc = stream.codec_context
            cc.time_base = self.time_base
            cc.thread_count = self.threads
            cc.colorspace = _COLORSPACE[self.matrix]
            cc.color_range = _RANGE_MPEG
            options = {"preset": self.preset, "crf": str(self.crf)}
            if self.x264_params:
                options["x264-params"] = ":".join(f"{k}={v}" for k, v in self.x264_params.items())
            stream.options = options
            stream.codec_context.open()  # errors (size, options) surface here, not at the first frame
        except Exception:
            self._container.close()
            raise
        self._stream = stream

    def write(self, planes: np.ndarray | Any, pts: int) -> None:
        """Encode one frame: ``planes`` ``(H * 3 // 2, W)`` uint8 (Y, then Cb, then Cr, even H and W:
        :func:`~facefleet.video.render.rgb_to_yuv420p` of one frame, on the host) or an ``av.VideoFrame``
        in yuv420p; ``pts``: the frame's pts in the source's time base (strictly increasing)."""
        if self._done:
            raise RuntimeError(f"SegmentEncoder: {self.path} is already closed")
        av = self._av
        if isinstance(planes, av.VideoFrame):
            frame = planes
            if frame.format.name != "yuv420p":
                raise ValueError(f"SegmentEncoder: frames must be yuv420p, got {frame.format.name}")
        else:
            a = np.asarray(planes)
            if (
                a.ndim != 2
                or a.dtype != np.uint8
                or a.shape[0] % 3
                or a.shape[1] % 2
                or (2 * a.shape[0] // 3) % 2
            ):
                raise ValueError(
                    "SegmentEncoder: planes must be (H * 3 // 2, W) uint8 with even H and W, "
                    f"got {a.shape} {a.dtype}"
                )
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="yuv420p")
        if self._stream is None:
            self._start(frame.width, frame.height)
        elif (frame.width, frame.height) != (self.width, self.height):
            raise ValueError(
                f"SegmentEncoder: {self.path}: frame {self.frames} is {frame.width}x{frame.height}, "
                f"the segment {self.width}x{self.height}"
            )
        pts = int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"SegmentEncoder: {self.path}: pts {pts} after {self._last_pts} (must increase)")
        frame.pts = pts
        frame.time_base = self.time_base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._last_pts = pts
        self.frames += 1

    def write_batch(self, planes: np.ndarray | Sequence[Any], pts: Sequence[int]) -> None:
        """:meth:`write` each of ``planes`` ``(B, H * 3 // 2, W)`` with its ``pts`` ``(B,)``."""
        if len(planes) != len(pts):
            raise ValueError(f"SegmentEncoder: {len(planes)} frames, {len(pts)} pts")
        for a, p in zip(planes, pts):
            self.write(a, p)

    def close(self) -> Path:
        """Flush the encoder, finish the file and move it to ``path``; returns ``path``."""
        if self._done:
            return self.path
        if self._stream is None:
            self.abort()
            raise ValueError(f"SegmentEncoder: {self.path}: no frame was written (an empty segment)")
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            _commit(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def abort(self) -> None:
        """Drop the segment: close and remove the temporary file (``path`` is untouched)."""
        self._done = True
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> SegmentEncoder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
