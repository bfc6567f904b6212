"""Frame-exact video chunks: FrameRange items, probe, chunk planning, chunked decoding.

Synthetic clips are written with PyAV in tmp_path (each frame's content encodes its index, so a
dropped, doubled or reordered frame changes the checksums); the real clips are
``../shared/data/videos`` (skipped without them).
"""

from __future__ import annotations

import hashlib
import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from facefleet.sources.items import FrameRange, ImageItem, item_from_json, items_from_json, items_to_json

av = pytest.importorskip("av")

from facefleet.io.video import VideoError, VideoInfo, plan_chunks, probe_video, read_frames  # noqa: E402


def _write_clip(
    path: Path,
    n: int = 60,
    *,
    gop: int = 12,
    bframes: int = 2,
    audio: bool = False,
    codec: str = "libx264",
    size: tuple[int, int] = (64, 48),
) -> Path:
    """An (H, W) = size[::-1] clip of ``n`` frames at 25 fps, keyframes every ``gop`` frames."""
    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.gop_size = gop
        if codec == "libx264":
            vs.codec_context.options = {"bf": str(bframes), "sc_threshold": "0", "keyint_min": str(gop)}
        as_ = out.add_stream("aac", rate=48000) if audio else None
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for i in range(n):
            img = np.roll(base, 3 * i, axis=1)
            img[: h // 4, :, :] = (i * 37) % 256  # a band whose shade is the frame's index
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if as_ is not None:
            samples = int(48000 * n / 25)
            af = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
            af.sample_rate = 48000
            for p in as_.encode(af):
                out.mux(p)
            for p in as_.encode():
                out.mux(p)
    return path


def _sequential(path: Path) -> list[tuple[float, str]]:
    """(pts seconds, sha1 of the RGB frame) of every frame, by one plain PyAV decode."""
    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        for f in c.decode(s):
            out.append(
                (float(f.pts * s.time_base), hashlib.sha1(f.to_ndarray(format="rgb24").tobytes()).hexdigest())
            )
    return out


def _chunked(chunks: list[FrameRange]) -> list[tuple[int, float, str]]:
    return [(i, t, hashlib.sha1(rgb.tobytes()).hexdigest()) for c in chunks for i, t, rgb in read_frames(c)]


def _assert_cover(chunks: list[FrameRange], n: int) -> None:
    assert chunks[0].start == 0 and chunks[-1].stop == n
    assert all(a.stop == b.start for a, b in itertools.pairwise(chunks))
    assert sum(c.count for c in chunks) == n


# --- FrameRange as a work item ----------------------------------------------------------------


def test_frame_range_json_round_trip_and_mixed_units() -> None:
    fr = FrameRange("/v/caf\udce9\nclip.mp4", 300, 250)
    assert fr.stop == 550
    assert fr.to_json() == {"kind": "frames", "source": fr.source, "start": 300, "count": 250}
    assert item_from_json(fr.to_json()) == fr
    items = (ImageItem("/d/a.jpg"), fr, FrameRange("s3://b/ü.mkv", 0, 1))
    text = items_to_json(items)
    assert text.isascii() and " " not in text
    assert items_from_json(text) == items
    assert items_to_json(items_from_json(text)) == text  # canonical: equal items, equal text


@pytest.mark.parametrize(
    "args", [("", 0, 1), ("a.mp4", -1, 5), ("a.mp4", 0, 0), ("a.mp4", 1.0, 5), ("a.mp4", 0, True)]
)
def test_frame_range_rejects_bad_fields(args: tuple) -> None:
    with pytest.raises(ValueError):
        FrameRange(*args)
    with pytest.raises(ValueError):
        item_from_json({"kind": "frames", "source": args[0], "start": args[1], "count": args[2]})


# --- synthetic clips ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_clip(tmp_path_factory.mktemp("v") / "clip.mp4", 60, gop=12, bframes=2, audio=True)


def test_probe_synthetic(clip: Path) -> None:
    info = probe_video(clip)
    assert isinstance(info, VideoInfo)
    assert (info.frames, info.width, info.height, info.codec, info.has_audio) == (60, 64, 48, "h264", True)
    assert info.fps == Fraction(25) and abs(info.duration - 2.4) < 1e-6
    assert info.rotation == 0.0
    assert info.keyframes == (0, 12, 24, 36, 48)
    assert probe_video(clip, exact=True).frames == 60


@pytest.mark.parametrize("chunk", [1, 5, 7, 12, 13, 25, 59, 60, 300])
@pytest.mark.parametrize("aligned", [True, False])
def test_chunks_equal_sequential_decode(clip: Path, chunk: int, aligned: bool) -> None:
    info = probe_video(clip)
    chunks = plan_chunks(info, chunk, keyframes=None if aligned else ())
    _assert_cover(chunks, 60)
    if not aligned:
        assert all(c.count == chunk for c in chunks[:-1]) and chunks[-1].count <= chunk + chunk // 2
    got = _chunked(chunks)
    ref = _sequential(clip)
    assert [i for i, _, _ in got] == list(range(60))
    assert [(t, h) for _, t, h in got] == ref
    assert len({h for _, _, h in got}) == 60  # every frame differs, so the test sees a swap


def test_plan_aligns_to_keyframes(clip: Path) -> None:
    chunks = plan_chunks(probe_video(clip), 10)
    assert [c.start for c in chunks] == [0, 12, 24, 36, 48]
    one = plan_chunks(probe_video(clip))  # default ~300: one chunk for a short clip
    assert one == [FrameRange(str(clip), 0, 60)]
    with pytest.raises(ValueError):
        plan_chunks(probe_video(clip), 0)


def test_read_single_frames_mid_gop(clip: Path) -> None:
    ref = _sequential(clip)
    for i in (0, 5, 11, 12, 13, 47, 59):
        ((j, t, rgb),) = list(read_frames(FrameRange(str(clip), i, 1)))
        assert j == i and rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
        assert (t, hashlib.sha1(rgb.tobytes()).hexdigest()) == ref[i]
    with pytest.raises(VideoError, match="the video has 60"):
        list(read_frames(FrameRange(str(clip), 55, 10)))


def test_mpeg4_without_bframes(tmp_path: Path) -> None:
    p = _write_clip(tmp_path / "m.mp4", 31, gop=8, codec="mpeg4", size=(32, 32))
    info = probe_video(p)
    assert info.frames == 31 and info.codec == "mpeg4" and not info.has_audio
    for chunk in (3, 8, 10):
        got = _chunked(plan_chunks(info, chunk, keyframes=()))
        assert [(t, h) for _, t, h in got] == _sequential(p)


# --- bad input ----------------------------------------------------------------------------------


def test_bad_inputs_name_file_and_reason(tmp_path: Path, clip: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    audio = tmp_path / "sound.wav"
    with av.open(str(audio), "w", format="wav") as out:
        s = out.add_stream("pcm_s16le", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        f.sample_rate = 8000
        for p in [*s.encode(f), *s.encode()]:
            out.mux(p)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # moov atom is at the end
    cases = {
        empty: "zero bytes",
        text: "not a video",
        audio: "audio-only",
        cut: "truncated MP4/MOV \\(no moov atom",
        tmp_path / "missing.mp4": "cannot read the file",
    }
    for path, reason in cases.items():
        with pytest.raises(VideoError, match=reason) as e:
            probe_video(path)
        assert str(path) in str(e.value)
        with pytest.raises(VideoError, match=reason):
            list(read_frames(FrameRange(str(path), 0, 1)))


def test_truncated_with_index_at_front(tmp_path: Path) -> None:
    """A faststart MP4 cut short: the index promises frames whose bytes are gone."""
    src = _write_clip(tmp_path / "a.mp4", 40, gop=10)
    fast = tmp_path / "fast.mp4"
    with av.open(str(src)) as i, av.open(str(fast), "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(VideoError, match=r"cut\.mp4: .*(truncated|corrupt)"):
        probe_video(cut, exact=True)
    with pytest.raises(VideoError, match=r"cut\.mp4: .*(truncated|corrupt)"):
        for c in plan_chunks(probe_video(cut), 10):
            list(read_frames(c))


# --- real clips ---------------------------------------------------------------------------------


def _real_videos(shared_data: Path) -> list[Path]:
    vids = sorted((shared_data / "videos").glob("*.mp4"))
    if not vids:
        pytest.skip(f"no videos in {shared_data / 'videos'}")
    return vids


def test_real_clips_chunked_equals_sequential(shared_data: Path) -> None:
    for path in _real_videos(shared_data):
        info = probe_video(path)
        ref = _sequential(path)
        assert info.frames == len(ref) and info.width > 0 and info.height > 0 and info.fps > 0
        assert info.keyframes[0] == 0
        for chunk, kf in ((37, ()), (100, None)):
            chunks = plan_chunks(info, chunk, keyframes=kf)
            _assert_cover(chunks, info.frames)
            got = _chunked(chunks)
            assert [i for i, _, _ in got] == list(range(info.frames)), path.name
            assert [(t, h) for _, t, h in got] == ref, path.name
