"""facefleet.video.encode / mux: chunks encoded into segments, joined by stream copy with the source's
audio (real clips from ../shared/data/videos and synthetic odd-size / PCM / silent sources)."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from facefleet.io.video import probe_video, read_frames
from facefleet.sources.items import FrameRange
from facefleet.video.encode import SegmentEncoder, pts_of, source_video
from facefleet.video.mux import MuxError, mux_video
from facefleet.video.render import rgb_to_yuv420p

av = pytest.importorskip("av")


def _clip(shared_data: Path, name: str) -> str:
    p = shared_data / "videos" / name
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return str(p)


def _encode_chunks(
    source: str, cuts: list[int], tmp: Path, *, preset: str = "veryfast", crf: int = 20
) -> tuple[list[Path], list[tuple[int, np.ndarray]]]:
    """Encode frames cuts[k] .. cuts[k+1]-1 of ``source`` into one segment each; returns the segments
    and the input frames (pts, rgb)."""
    src = source_video(source)
    segments, frames = [], []
    for k in range(len(cuts) - 1):
        seg = tmp / f"seg{k}.mp4"
        with SegmentEncoder(
            seg, time_base=src.time_base, fps=src.fps, preset=preset, crf=crf, matrix=src.matrix
        ) as enc:
            chunk = list(read_frames(FrameRange(source=source, start=cuts[k], count=cuts[k + 1] - cuts[k])))
            rgb = torch.from_numpy(np.stack([c[2] for c in chunk])).permute(0, 3, 1, 2)
            pts = [pts_of(c[1], src.time_base) for c in chunk]
            enc.write_batch(rgb_to_yuv420p(rgb, src.matrix).numpy(), pts)
            frames += [(p, c[2]) for p, c in zip(pts, chunk)]
        assert enc.frames == cuts[k + 1] - cuts[k]
        segments.append(seg)
    return segments, frames


def _packets(path: str | Path, kind: str) -> list[tuple[int, int, int, bytes]]:
    with av.open(str(path)) as c:
        streams = getattr(c.streams, kind)
        if not streams:
            return []
        return [(p.pts, p.dts, p.duration, bytes(p)) for p in c.demux(streams[0]) if p.size]


def _check_output(out: Path, source: str, frames: list[tuple[int, np.ndarray]], min_psnr: float) -> None:
    info_in, info_out = probe_video(source), probe_video(out)
    assert info_out.frames == info_in.frames == len(frames)
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.time_base == av.open(source).streams.video[0].time_base
        decoded = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(stream)]
        out_duration = c.duration
    assert [p for p, _ in decoded] == [p for p, _ in frames]  # the source's pts, every frame
    with av.open(source) as c:
        in_duration = c.duration
    assert abs(out_duration - in_duration) <= 1e6 / float(info_in.fps)  # within one frame (microseconds)
    assert info_out.rotation == 0
    video = _packets(out, "video")
    dts = [d for _, d, _, _ in video]
    assert all(a < b for a, b in itertools.pairwise(dts)) and all(d <= p for p, d, _, _ in video)
    for (_, got), (_, want) in zip(decoded, frames):
        h, w = want.shape[:2]
        mse = np.mean((got[:h, :w].astype(np.float64) - want) ** 2)
        assert 10 * np.log10(255**2 / max(mse, 1e-9)) > min_psnr


@pytest.mark.parametrize(
    ("name", "cuts", "preset"),
    [
        ("liveportrait_d12.mp4", [0, 60, 120, 183], "veryfast"),  # B-frames at both boundaries
        ("face_recognition_short_hamilton_clip.mp4", [0, 100, 190, 275], "ultrafast"),  # starts at 0.85 s
    ],
)
def test_segments_mux_to_the_source_timing_and_audio(
    shared_data: Path, tmp_path: Path, name: str, cuts: list[int], preset: str
) -> None:
    source = _clip(shared_data, name)
    segments, frames = _encode_chunks(source, cuts, tmp_path, preset=preset)
    out = tmp_path / "out" / "anon.mp4"
    res = mux_video(segments, source, out)
    assert res.path == out and res.frames == len(frames) == cuts[-1]
    assert sorted(p.name for p in out.parent.iterdir()) == ["anon.mp4"]  # no temporary left
    _check_output(out, source, frames, min_psnr=30)
    audio_in, audio_out = _packets(source, "audio"), _packets(out, "audio")
    assert res.audio_packets == len(audio_in) > 100
    assert audio_out == audio_in  # bytes, pts, dts and durations


def _synthetic_source(path: Path, w: int, h: int, n: int, audio: str | None) -> str:
    """A lossless (PNG) video of ``n`` frames at 25 fps, with a second of tone in ``audio`` if given."""
    yy, xx = np.mgrid[0 : h + 40, 0 : w + 80].astype(np.float64)
    base = np.stack(
        [128 + 100 * np.sin(xx / 7) * np.cos(yy / 11), 128 + 90 * np.cos((xx + yy) / 13), 40 + 2 * xx], axis=2
    )
    base = np.clip(base, 0, 255).astype(np.uint8)  # smooth: what 4:2:0 and x264 keep
    with av.open(str(path), "w") as c:
        v = c.add_stream("png", rate=25)
        v.width, v.height, v.pix_fmt = w, h, "rgb24"
        a = c.add_stream(audio, rate=16000, layout="mono") if audio else None
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(base[i : i + h, 2 * i : 2 * i + w]), format="rgb24"
            )
            frame.pts = i
            frame.time_base = Fraction(1, 25)
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            t = np.arange(16000) / 16000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            fmt = a.codec_context.format.name
            samples = (tone * 32767).astype(np.int16) if fmt.startswith("s16") else tone
            af = av.AudioFrame.from_ndarray(samples[None], format=fmt, layout="mono")
            af.sample_rate, af.pts = 16000, 0
            for p in a.encode(af):
                c.mux(p)
            for p in a.encode():
                c.mux(p)
    return str(path)


def test_odd_size_source_encodes_at_the_even_size(tmp_path: Path) -> None:
    source = _synthetic_source(tmp_path / "odd.mov", 101, 77, 30, "aac")
    segments, frames = _encode_chunks(source, [0, 13, 30], tmp_path, crf=10)
    out = tmp_path / "odd_out.mp4"
    mux_video(segments, source, out)
    info = probe_video(out)
    assert (info.width, info.height) == (102, 78)  # 4:2:0 needs even sides: the last row and column repeat
    _check_output(out, source, frames, min_psnr=30)
    assert _packets(out, "audio") == _packets(source, "audio")


def test_source_without_audio_gives_video_only(tmp_path: Path) -> None:
    source = _synthetic_source(tmp_path / "silent.mov", 64, 48, 20, None)
    segments, frames = _encode_chunks(source, [0, 20], tmp_path, preset="ultrafast")
    out = tmp_path / "silent.mp4"
    res = mux_video(segments, source, out)
    assert res.audio_packets == 0 and res.frames == 20
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video"]
    _check_output(out, source, frames, min_psnr=30)


def test_audio_that_mp4_cannot_hold_is_a_clear_error(tmp_path: Path) -> None:
    source = _synthetic_source(tmp_path / "pcm.mov", 64, 48, 10, "pcm_alaw")  # G.711 A-law: MOV, not MP4
    segments, _ = _encode_chunks(source, [0, 10], tmp_path, preset="ultrafast")
    with pytest.raises(MuxError, match=r"pcm\.mov.*pcm_alaw"):
        mux_video(segments, source, tmp_path / "pcm_out.mp4")
    assert not list(tmp_path.glob("*pcm_out*"))
    mov = mux_video(segments, source, tmp_path / "pcm_out.mov")  # MOV takes PCM
    assert _packets(mov.path, "audio") == _packets(source, "audio")


def test_segments_out_of_order_and_failed_encodes(tmp_path: Path) -> None:
    source = _synthetic_source(tmp_path / "src.mov", 64, 48, 20, None)
    segments, _ = _encode_chunks(source, [0, 10, 20], tmp_path, preset="ultrafast")
    with pytest.raises(MuxError, match="seg0"):
        mux_video(segments[::-1], source, tmp_path / "bad.mp4")
    assert not list(tmp_path.glob("*bad*"))
    # an exception inside the block leaves neither the segment nor a temporary file
    with pytest.raises(RuntimeError), SegmentEncoder(tmp_path / "x.mp4", time_base=Fraction(1, 25)) as enc:
        enc.write(np.zeros((72, 64), np.uint8), 0)
        raise RuntimeError("boom")
    assert not list(tmp_path.glob("*x.*"))
    enc2 = SegmentEncoder(tmp_path / "y.mp4", time_base=Fraction(1, 25))
    enc2.write(np.zeros((72, 64), np.uint8), 5)
    with pytest.raises(ValueError, match="must increase"):
        enc2.write(np.zeros((72, 64), np.uint8), 5)
    with pytest.raises(ValueError, match="even"):
        enc2.write(np.zeros((72, 63), np.uint8), 6)
    enc2.abort()
    assert not list(tmp_path.glob("*y.*"))
