"""Video files as frame-exact chunks: probe, plan chunks, read the frames of one chunk.

Frame ``i`` of a video is the ``i``-th frame of its first video stream in presentation order
(ascending pts), counted from 0. The index of frames is built by demuxing the stream's packets
(cheap: no decoding): every packet with a pts is one frame. The container's own frame count
(``nb_frames`` in the header) is never trusted: it is missing in many containers (MKV, WebM,
MPEG-TS) and wrong in edited or variable-frame-rate MP4s. :func:`probe_video` with
``exact=True`` counts by decoding every frame instead, and :func:`read_frames` checks, frame by
frame, that the decoder gives exactly the frames the index promised, so a disagreement is an error
rather than a silently dropped or doubled frame.

Needs PyAV (``pip install facefleet[video]``).
"""

from __future__ import annotations

import bisect
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from facefleet.sources.items import FrameRange

DEFAULT_CHUNK_FRAMES = 300


class VideoError(ValueError):
    """A file that cannot be read as a video; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What :func:`probe_video` found in a video file.

    ``frames``: frames of the first video stream (counted, see the module's docstring);
    ``fps``: average frame rate as an exact fraction (e.g. ``Fraction(30000, 1001)``);
    ``duration``: seconds from the first frame's pts to the end of the last frame;
    ``rotation``: degrees counter-clockwise from the display matrix (0, 90, 180, 270 or other),
    which a player applies and :func:`read_frames` does not; ``keyframes``: ascending frame
    indices of the keyframes (0 is always one when the stream starts with a keyframe).
    """

    path: str
    frames: int
    fps: Fraction
    duration: float
    width: int
    height: int
    rotation: float
    has_audio: bool
    codec: str
    keyframes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Index:
    pts: tuple[int, ...]  # (N,) presentation timestamps in stream time base, ascending
    keyframes: tuple[int, ...]  # frame indices of keyframes, ascending


def _av() -> Any:
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("video needs PyAV: pip install 'facefleet[video]'") from e
    return av


def _open(path: str | os.PathLike[str]) -> Any:
    """An open PyAV container of ``path`` with at least one video stream, or a :class:`VideoError`."""
    av = _av()
    p = os.fspath(path)
    try:
        size = os.stat(p).st_size
    except OSError as e:
        raise VideoError(f"{p}: cannot read the file ({e.strerror or e})") from e
    if size == 0:
        raise VideoError(f"{p}: zero bytes (an empty file is not a video)")
    try:
        container = av.open(p)
    except av.error.FFmpegError as e:
        msg = str(e)
        if _mp4_without_moov(p):
            raise VideoError(
                f"{p}: truncated MP4/MOV (no moov atom: the file was cut before its index)"
            ) from e
        raise VideoError(f"{p}: not a video (FFmpeg cannot parse the container: {msg})") from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        what = (
            "audio-only" if kinds == ["audio"] else f"no video stream (streams: {', '.join(kinds) or 'none'})"
        )
        raise VideoError(f"{p}: {what}")
    return container


def _mp4_without_moov(path: str) -> bool:
    """True for an ISO-BMFF file (MP4/MOV: ``ftyp`` first) whose top-level boxes hold no ``moov``
    (FFmpeg logs "moov atom not found" but raises a bare "Invalid data")."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            pos, first = 0, True
            while pos + 8 <= size:
                f.seek(pos)
                head = f.read(16)
                box_size, box = int.from_bytes(head[:4], "big"), head[4:8]
                if first and box != b"ftyp":
                    return False
                first = False
                if box == b"moov":
                    return False
                if box_size == 1 and len(head) == 16:
                    box_size = int.from_bytes(head[8:16], "big")
                if box_size < 8:  # 0 = to the end of the file; smaller is corrupt
                    break
                pos += box_size
            return not first
    except OSError:
        return False


def _build_index(path: str) -> _Index:
    av = _av()
    container = _open(path)
    try:
        stream = container.streams.video[0]
        entries: list[tuple[int, bool]] = []
        try:
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size > 0:
                    entries.append((packet.pts, packet.is_keyframe))
        except av.error.FFmpegError as e:
            raise VideoError(
                f"{path}: truncated or corrupt (demuxing failed after {len(entries)} frames: {e})"
            ) from e
    finally:
        container.close()
    if not entries:
        raise VideoError(f"{path}: the video stream has no frames")
    entries.sort()
    return _Index(
        pts=tuple(p for p, _ in entries), keyframes=tuple(i for i, (_, k) in enumerate(entries) if k)
    )


@functools.lru_cache(maxsize=64)
def _cached_index(path: str, size: int, mtime_ns: int) -> _Index:
    return _build_index(path)


def _index(path: str) -> _Index:
    """The frame index of ``path``, cached while the file's size and mtime stay the same."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise VideoError(f"{path}: cannot read the file ({e.strerror or e})") from e
    return _cached_index(path, st.st_size, st.st_mtime_ns)


def frame_timestamps(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], Fraction]:
    """The pts of every frame of ``path``'s first video stream, in frame order, and the stream's time
    base: frame ``i`` is shown at ``pts[i] * time_base`` seconds (what encoders given these frames keep,
    so an output has the input's exact timing, variable frame rates included)."""
    p = os.fspath(path)
    idx = _index(p)
    container = _open(p)
    try:
        tb = container.streams.video[0].time_base
    finally:
        container.close()
    return idx.pts, Fraction(tb.numerator, tb.denominator)


def quarter_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns (0-3) that show a decoded frame as a player does, from
    :attr:`VideoInfo.rotation`: ``np.rot90(rgb, k)`` of an ``(H, W, 3)`` frame or
    ``torch.rot90(x, k, dims=(1, 2))`` of a ``(3, H, W)`` one. 0 for angles that are not multiples of 90."""
    turns = round(rotation / 90)
    return turns % 4 if abs(rotation - 90 * turns) < 1e-3 else 0


def probe_video(path: str | os.PathLike[str], *, exact: bool = False) -> VideoInfo:
    """Frames, rate, size, rotation, audio and codec of ``path``'s first video stream.

    ``frames`` counts the stream's packets (see the module docstring), never the header's count;
    ``exact=True`` counts by decoding every frame instead (slow: a full decode) and raises a
    :class:`VideoError` when the two counts disagree (a truncated or corrupt stream).
    Raises :class:`VideoError` for a missing, empty, truncated, audio-only or non-video file.
    """
    p = os.fspath(path)
    idx = _index(p)
    av = _av()
    container = _open(p)
    try:
        stream = container.streams.video[0]
        cc = stream.codec_context
        tb = stream.time_base
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = Fraction(rate) if rate else Fraction(0)
        rotation = 0.0
        decoded = 0
        try:
            for frame in container.decode(stream):
                if decoded == 0:
                    rotation = float(getattr(frame, "rotation", 0) or 0)
                decoded += 1
                if not exact:
                    break
        except av.error.FFmpegError as e:
            raise VideoError(
                f"{p}: truncated or corrupt (decoding failed after {decoded} frames: {e})"
            ) from e
        if not rotation and "rotate" in stream.metadata:
            rotation = -float(stream.metadata["rotate"])  # old MP4 tag: clockwise degrees
        if exact and decoded != len(idx.pts):
            raise VideoError(
                f"{p}: truncated or corrupt (decoded {decoded} frames, the stream has {len(idx.pts)} packets)"
            )
        if decoded == 0:
            raise VideoError(f"{p}: no frame could be decoded")
        # end of the last frame: its pts plus one frame period (or the gap before it)
        period = round(1 / (fps * tb)) if fps and tb else 0
        last = idx.pts[-1] - idx.pts[-2] if len(idx.pts) > 1 else period
        duration = float((idx.pts[-1] + last - idx.pts[0]) * tb) if tb else 0.0
        return VideoInfo(
            path=p,
            frames=len(idx.pts),
            fps=fps,
            duration=duration,
            width=int(cc.width),
            height=int(cc.height),
            rotation=rotation,
            has_audio=bool(container.streams.audio),
            codec=str(cc.name),
            keyframes=idx.keyframes,
        )
    finally:
        container.close()


def plan_chunks(
    info: VideoInfo,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    *,
    keyframes: Sequence[int] | None = None,
) -> list[FrameRange]:
    """Consecutive :class:`FrameRange` items covering frames ``0 .. info.frames - 1`` exactly once.

    Each boundary moves to the keyframe nearest to ``start + chunk_frames`` when one lies within
    half a chunk of it (so most chunks start on a keyframe and decode nothing they drop);
    otherwise the chunk is exactly ``chunk_frames`` long. The last chunk takes the rest (up to
    1.5 chunks) rather than leave a short tail. ``keyframes`` defaults to
    ``info.keyframes``; pass ``()`` for fixed-size chunks.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    kf = sorted(set(info.keyframes if keyframes is None else keyframes))
    n = info.frames
    out: list[FrameRange] = []
    start = 0
    while start < n:
        target = start + chunk_frames
        end = n
        if n - start > chunk_frames + chunk_frames // 2:  # else the rest is one chunk, no short tail
            end = target
            lo, hi = start + max(1, chunk_frames // 2), min(n - 1, start + chunk_frames + chunk_frames // 2)
            i = bisect.bisect_left(kf, lo)
            best: int | None = None
            while i < len(kf) and kf[i] <= hi:
                if best is None or abs(kf[i] - target) < abs(best - target):
                    best = kf[i]
                i += 1
            if best is not None:
                end = best
        out.append(FrameRange(source=info.path, start=start, count=end - start))
        start = end
    return out


def read_frames(item: FrameRange) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decode frames ``item.start .. item.start + item.count - 1`` of ``item.source``, in order.

    Yields ``(frame_index, pts_seconds, rgb)`` with ``rgb`` an ``(H, W, 3)`` uint8 RGB array
    (rotation not applied). Seeks to the keyframe at or before ``item.start``, decodes, drops
    the frames before it and stops after the last one, so reading every chunk of
    :func:`plan_chunks` gives each frame exactly once, equal to a sequential decode. Raises
    :class:`VideoError` when the file ends (or the decoder skips a frame) before the range does.
    """

    def opener(path: str) -> Any:
        container = _open(path)
        container.streams.video[0].thread_type = "AUTO"
        return container

    return walk_range(item, opener, lambda frame: frame.to_ndarray(format="rgb24"))


def walk_range(
    item: FrameRange, opener: Callable[[str], Any], convert: Callable[[Any], Any]
) -> Iterator[Any]:
    """The frame-exact walk of :func:`read_frames` with ``opener(path)`` giving the container (a CPU or
    a hardware decoder: :mod:`facefleet.io.nvdec`) and ``convert(frame)`` the value yielded: seek to the
    keyframe at or before the start (an earlier one when a seek lands late), drop the frames before
    it, check each frame's index against the packet index, stop after the last one."""
    path = item.source
    idx = _index(path)
    n = len(idx.pts)
    stop = item.start + item.count
    if stop > n:
        raise VideoError(f"{path}: frames {item.start}..{stop - 1} asked for, the video has {n}")
    av = _av()
    pos = {p: i for i, p in enumerate(idx.pts)}
    # keyframes at or before the start, nearest first; an earlier one is tried when a seek lands late
    k = bisect.bisect_right(idx.keyframes, item.start)
    candidates = list(reversed(idx.keyframes[:k]))[:3]
    if 0 not in candidates:
        candidates.append(0)  # frame 0 without a seek: the last resort
    for key in candidates:
        container = opener(path)
        try:
            stream = container.streams.video[0]
            tb = stream.time_base
            if key > 0:
                container.seek(idx.pts[key], stream=stream, backward=True, any_frame=False)
            expected = item.start
            late = False
            try:
                for frame in container.decode(stream):
                    if frame.pts is None:
                        raise VideoError(f"{path}: a decoded frame has no pts (cannot place it in the video)")
                    i = pos.get(frame.pts)
                    if i is None:
                        raise VideoError(
                            f"{path}: decoded a frame at pts {frame.pts} that no packet announced"
                        )
                    if i < expected:
                        continue
                    if i > expected:
                        if expected == item.start:  # the seek landed after the start: seek earlier
                            late = True
                            break
                        raise VideoError(f"{path}: frame {expected} could not be decoded (next was {i})")
                    yield i, float(frame.pts * tb), convert(frame)
                    del frame  # a hardware decoder's frame goes back to its pool
                    expected += 1
                    if expected == stop:
                        return
            except av.error.FFmpegError as e:
                raise VideoError(
                    f"{path}: truncated or corrupt (decoding stopped before frame {expected}: {e})"
                ) from e
            if not late:
                raise VideoError(
                    f"{path}: truncated or corrupt (the stream ended before frame {expected} of {n})"
                )
        finally:
            container.close()
    raise VideoError(f"{path}: cannot seek to frame {item.start} (every seek landed after it)")


def decode_all(path: str | os.PathLike[str]) -> Iterator[tuple[int, float, np.ndarray]]:
    """Every frame of ``path`` by one sequential decode from the start: ``(i, pts_seconds, (H, W, 3))``.

    The reference that chunked reading equals; also the simplest way to read a short clip.
    """
    p = str(Path(path))
    return read_frames(FrameRange(source=p, start=0, count=len(_index(p).pts)))
