"""The kinds of video a user brings, made here with PyAV from the astronaut portrait: variable frame rate,
a display rotation, HEVC 10-bit, an odd frame size, no face at all. Each goes through ``facefleet video``
with anonymisation and keeps its frames, timestamps and upright orientation."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

av = pytest.importorskip("av")

from facefleet.config import CpuConfig, JobConfig, VideoConfig  # noqa: E402
from facefleet.engine.video_job import run_video  # noqa: E402
from facefleet.io.video import decode_all, frame_timestamps, probe_video  # noqa: E402


def _write(
    path: Path,
    frames: list[np.ndarray],
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pts: list[int] | None = None,
    time_base: Fraction = Fraction(1, 25),
    rotation: float = 0,
) -> None:
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as o:
        s = o.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        s.time_base = time_base
        s.codec_context.time_base = time_base
        s.options = {"preset": "ultrafast"} if codec in ("libx264", "libx265") else {}
        if codec == "libx265":
            s.options = {"preset": "ultrafast", "x265-params": "log-level=error"}
        if rotation:
            s.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            f.pts = i if pts is None else pts[i]
            f.time_base = time_base
            for p in s.encode(f):
                o.mux(p)
        for p in s.encode(None):
            o.mux(p)


def _moving(face: np.ndarray, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``n`` frames of ``size`` (H, W) with the portrait sliding a little to the right."""
    from PIL import Image

    h, w = size
    side = min(h, w) * 3 // 4
    img = np.asarray(Image.fromarray(face).resize((side, side)))
    out = []
    for i in range(n):
        f = np.full((h, w, 3), 90, np.uint8)
        x = 4 + 2 * i
        f[(h - side) // 2 : (h - side) // 2 + side, x : x + side] = img
        out.append(f)
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> tuple[Path, dict[str, Path]]:
    d = tmp_path_factory.mktemp("kinds")
    v = {}
    v["vfr"] = d / "vfr.mp4"  # frames 40 to 100 ms apart, in a 1/1000 time base
    gaps = [40, 40, 100, 40, 60, 40, 40, 80, 40, 40] * 2
    _write(v["vfr"], _moving(astronaut, 20, (240, 320)), pts=list(np.cumsum([0, *gaps[:19]])),
           time_base=Fraction(1, 1000))  # fmt: skip
    # stored turned a quarter clockwise, with a display matrix that turns it back
    upright = _moving(astronaut, 12, (320, 240))
    v["rotated"] = d / "rotated.mp4"
    _write(v["rotated"], [np.ascontiguousarray(np.rot90(f, -1)) for f in upright], rotation=90)
    v["hevc10"] = d / "hevc10.mp4"
    _write(v["hevc10"], _moving(astronaut, 12, (240, 320)), codec="libx265", pix_fmt="yuv420p10le")
    v["odd"] = d / "odd.mp4"  # 4:4:4 allows odd sides
    _write(v["odd"], _moving(astronaut, 12, (227, 301)), pix_fmt="yuv444p")
    v["noface"] = d / "noface.mp4"
    _write(v["noface"], [np.full((120, 160, 3), 20 * i, np.uint8) for i in range(10)])
    return d, v


@pytest.fixture(scope="module")
def ran(made: tuple[Path, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    d, _ = made
    out = tmp_path_factory.mktemp("out")
    cfg = JobConfig(
        devices="cpu",
        cpu=CpuConfig(workers=1, threads=1, batch_size=8),
        video=VideoConfig(formats=("parquet", "anonymize"), preset="ultrafast", smoothing=False),
    )
    summary = run_video([str(d)], out, cfg, quiet=True)
    return out, summary


@pytest.mark.parametrize("kind", ["vfr", "rotated", "hevc10", "odd", "noface"])
def test_each_kind_keeps_its_frames_and_timing(
    made: tuple[Path, dict[str, Path]], ran: tuple[Path, object], kind: str
) -> None:
    _, videos = made
    out, summary = ran
    assert summary.errors == {}  # type: ignore[attr-defined]
    src = videos[kind]
    anon = out / f"{src.name}.anonymized.mp4"
    a, b = probe_video(src), probe_video(anon)
    assert b.frames == a.frames
    (pa_, ta), (pb, tb) = frame_timestamps(src), frame_timestamps(anon)
    assert [p * ta for p in pa_] == [p * tb for p in pb]  # VFR kept frame by frame
    rows = pq.read_table(out / f"{src.name}.parquet")
    if kind == "noface":
        assert rows.num_rows == 0
        return
    assert sorted(set(rows.column("frame").to_pylist())) == list(range(a.frames))  # a face on every frame
    if kind == "rotated":  # processed upright: the output is the player's view, with no display matrix
        assert (b.width, b.height, b.rotation) == (240, 320, 0)
        assert rows.column("height")[0].as_py() == 320
    if kind == "odd":  # 4:2:0 needs even sides: one row and column repeated
        assert (b.width, b.height) == (302, 228)


def test_no_face_video_is_copied_frame_for_frame(
    made: tuple[Path, dict[str, Path]], ran: tuple[Path, object]
) -> None:
    _, videos = made
    out, _ = ran
    src = videos["noface"]
    a = [rgb.astype(int) for _, _, rgb in decode_all(src)]
    b = [rgb.astype(int) for _, _, rgb in decode_all(out / f"{src.name}.anonymized.mp4")]
    assert len(a) == len(b) and max(np.abs(x - y).mean() for x, y in zip(a, b)) < 3
