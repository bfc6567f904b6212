"""Join encoded segments into one video with the source's audio, by stream copy (nothing re-encoded).

:func:`mux_video` writes the video packets of the segments (:class:`facefleet.video.encode.SegmentEncoder`
files, in order) one after the other, with the pts and dts they were encoded with (the source's
frame pts, in the source's time base), and the source's audio packets unchanged (bytes,
timestamps and durations: audio is never cut into chunks). The result keeps the source's frame
count, timing and duration. Frames were processed upright (the source's rotation applied when they
were decoded), so the output carries no display matrix (no rotation).

Needs PyAV (``pip install facefleet[video]``).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from facefleet.io.video import VideoError, _av, _open
from facefleet.video.encode import _commit, _mp4_options, _temp_beside, _track_timescale

__all__ = ["MuxError", "MuxedVideo", "mux_video"]


class MuxError(VideoError):
    """Segments or a source that cannot be joined into the output; the message names the file."""


@dataclass(frozen=True, slots=True)
class MuxedVideo:
    """What :func:`mux_video` wrote: ``path``, video ``frames`` (the segments' sum), ``audio_packets``
    copied and ``duration`` in seconds (the container's)."""

    path: Path
    frames: int
    audio_packets: int
    duration: float


def _source_durations(source: str) -> dict[int, int]:
    """pts -> duration (source time base) of every packet of ``source``'s first video stream."""
    container = _open(source)
    try:
        stream = container.streams.video[0]
        return {
            p.pts: p.duration for p in container.demux(stream) if p.pts is not None and p.size and p.duration
        }
    finally:
        container.close()


def _video_packets(
    segments: Sequence[str], time_base: Fraction, durations: dict[int, int], extradata: bytes | None
) -> Iterator[Any]:
    """Every segment's video packets in order, timestamps in ``time_base``, dts strictly increasing."""
    last_dts: int | None = None
    last_pts: int | None = None
    for seg in segments:
        container = _open(seg)
        try:
            stream = container.streams.video[0]
            if stream.codec_context.extradata != extradata:
                raise MuxError(
                    f"{seg}: its H.264 parameter sets differ from the first segment's (every segment of a "
                    "video must be encoded with the same settings)"
                )
            ratio = Fraction(stream.time_base) / time_base
            seg_max: int | None = None
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.pts is None or packet.dts is None:
                    raise MuxError(f"{seg}: a video packet without timestamps")
                pts, dts = packet.pts * ratio, packet.dts * ratio
                if pts.denominator != 1 or dts.denominator != 1:
                    raise MuxError(f"{seg}: timestamps not whole ticks of the source's time base {time_base}")
                pts, dts = int(pts), int(dts)
                if last_pts is not None and seg_max is None and pts <= last_pts:
                    raise MuxError(
                        f"{seg}: starts at pts {pts}, before the previous segment's end (out of order?)"
                    )
                if last_dts is not None and dts <= last_dts:
                    # a B-frame segment starts its dts earlier than its pts: move them up, never past the pts
                    if last_dts + 1 > pts:
                        raise MuxError(f"{seg}: dts {dts} cannot follow {last_dts} (pts {pts})")
                    dts = last_dts + 1
                packet.pts, packet.dts = pts, dts
                packet.time_base = time_base
                packet.duration = durations.get(pts, int(packet.duration * ratio) if packet.duration else 0)
                last_dts = dts
                seg_max = pts if seg_max is None else max(seg_max, pts)
                yield packet
            if seg_max is None:
                raise MuxError(f"{seg}: no video packets")
            last_pts = seg_max
        finally:
            container.close()


def mux_video(
    segments: Sequence[str | os.PathLike[str]],
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    audio: bool = True,
) -> MuxedVideo:
    """Join ``segments``' video (in order) and ``source``'s audio streams into ``out`` (atomic write).

    Video packets are copied with their pts/dts in the source's time base (dts made strictly
    increasing across segment boundaries, never later than a packet's pts) and the source's frame
    durations; each segment must hold later frames than the one before it. Every audio stream of
    ``source`` is copied packet by packet, bit-identical (``audio=False``: none). The format follows
    ``out``'s suffix (``.mp4``, ``.mov``, ``.mkv``); raises :class:`MuxError` naming the file when the
    source's audio codec cannot go into it (e.g. PCM into MP4: use ``.mov`` or ``.mkv``), when
    segments were encoded with different settings or are out of order.
    """
    av = _av()
    seg_paths = [os.fspath(s) for s in segments]
    if not seg_paths:
        raise MuxError(f"{os.fspath(out)}: no segments to join")
    src = os.fspath(source)
    dest = Path(os.fspath(out))
    dest.parent.mkdir(parents=True, exist_ok=True)
    durations = _source_durations(src)
    first = _open(seg_paths[0])
    srcc = _open(src)
    tmp = _temp_beside(dest)
    frames = audio_packets = 0
    try:
        tb = Fraction(srcc.streams.video[0].time_base)
        seg_stream = first.streams.video[0]
        extradata = seg_stream.codec_context.extradata
        audio_in = list(srcc.streams.audio) if audio else []
        scales = [_track_timescale(tb)] + [a.codec_context.sample_rate or 1 for a in audio_in]
        output = av.open(str(tmp), "w", options=_mp4_options(dest, scales))
        try:
            ov = output.add_stream_from_template(seg_stream)
            ov.time_base = tb
            audio_out = {}
            for a in audio_in:
                try:
                    audio_out[a.index] = output.add_stream_from_template(a)
                except (ValueError, av.error.FFmpegError) as e:
                    raise MuxError(
                        f"{src}: its audio codec {a.codec_context.name} cannot go into {dest.name} "
                        f"({output.format.name}): {e}; write .mov or .mkv instead"
                    ) from e
            try:
                output.start_encoding()
            except av.error.FFmpegError as e:
                names = ", ".join(a.codec_context.name for a in audio_in) or "none"
                raise MuxError(
                    f"{src}: cannot write its streams into {dest.name} (video h264, audio {names}): {e}; "
                    "the audio codec may not fit this container (try .mov or .mkv)"
                ) from e

            def audio_packets_of() -> Iterator[Any]:
                if not audio_in:
                    return
                for packet in srcc.demux(audio_in):
                    if packet.size == 0 or packet.dts is None:
                        continue
                    packet.stream = audio_out[packet.stream.index]
                    yield packet

            def keyed(packets: Iterator[Any], kind: int) -> Iterator[tuple[Fraction, int, int, Any]]:
                for n, p in enumerate(packets):
                    yield Fraction(p.dts) * Fraction(p.time_base), kind, n, p

            for _, kind, _, packet in heapq.merge(
                keyed(_video_packets(seg_paths, tb, durations, extradata), 0), keyed(audio_packets_of(), 1)
            ):
                if kind == 0:
                    packet.stream = ov
                    frames += 1
                else:
                    audio_packets += 1
                output.mux(packet)
        finally:
            output.close()
        _commit(tmp, dest)
    except av.error.FFmpegError as e:
        tmp.unlink(missing_ok=True)
        raise MuxError(f"{dest}: muxing failed: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        first.close()
        srcc.close()
    check = _open(dest)
    try:
        duration = float(check.duration or 0) / 1_000_000
    finally:
        check.close()
    return MuxedVideo(path=dest, frames=frames, audio_packets=audio_packets, duration=duration)
