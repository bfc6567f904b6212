"""``facefleet video`` end to end on the CPU: chunks through the queue and worker processes, the outputs'
frames, timing and audio, resume after kill -9, bad inputs beside good ones."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

av = pytest.importorskip("av")

from facefleet.config import CpuConfig, JobConfig, RunConfig, VideoConfig  # noqa: E402
from facefleet.engine.video_job import run_video  # noqa: E402
from facefleet.io.video import decode_all, frame_timestamps, probe_video  # noqa: E402

CLIP = "videos/liveportrait_d12.mp4"  # 183 frames, 512x512, 25 fps, H.264 + AAC, one face


def _cfg(formats: tuple[str, ...] = ("parquet",), workers: int = 2, **video: object) -> JobConfig:
    v = {"chunk_frames": 60, "overlap": 4, "formats": formats, "preset": "ultrafast", **video}
    return JobConfig(
        devices="cpu",
        cpu=CpuConfig(workers=workers, threads=1, batch_size=4),
        run=RunConfig(lease_seconds=5.0),
        video=VideoConfig(**v),  # type: ignore[arg-type]
    )


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def _frame_hashes(path: Path) -> list[str]:
    return [hashlib.sha1(rgb.tobytes()).hexdigest() for _, _, rgb in decode_all(path)]


@pytest.fixture(scope="module")
def full_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One uninterrupted run of the clip with every output, by two CPU workers."""
    src = shared_data / CLIP
    out = tmp_path_factory.mktemp("video")
    s = run_video([str(src)], out, _cfg(("parquet", "json", "anonymize")), quiet=True)
    assert s.exit_code == 0, s.errors
    return src, out


def test_outputs_keep_every_frame_the_timing_and_the_audio(full_run: tuple[Path, Path]) -> None:
    src, out = full_run
    info = probe_video(src)
    anon = out / (src.name + ".anonymized.mp4")
    got = probe_video(anon)
    assert got.frames == info.frames == 183
    assert frame_timestamps(anon)[0] and abs(got.duration - info.duration) < 1.5 / float(info.fps)
    in_pts, in_tb = frame_timestamps(src)
    out_pts, out_tb = frame_timestamps(anon)
    assert [p * in_tb for p in in_pts] == [p * out_tb for p in out_pts]  # every frame at its own time
    assert _audio_packets(anon) == _audio_packets(src)  # audio copied bit for bit
    # the face is covered: its region differs from the input, the rest stays close to it
    rows = pq.read_table(out / (src.name + ".parquet"))
    box = np.asarray(rows.column("bbox")[50].as_py()).astype(int)
    frame = int(rows.column("frame")[50].as_py())
    a = next(rgb for i, _, rgb in decode_all(src) if i == frame).astype(float)
    b = next(rgb for i, _, rgb in decode_all(anon) if i == frame).astype(float)
    x0, y0, x1, y1 = np.clip(box, 0, 511)
    inside = np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean()
    corner = np.abs(a[:40, :40] - b[:40, :40]).mean()
    assert inside > 10 and corner < 4, (inside, corner)


def test_rows_cover_each_frame_once_with_one_track(full_run: tuple[Path, Path]) -> None:
    src, out = full_run
    rows = pq.read_table(out / (src.name + ".parquet"))
    frames = rows.column("frame").to_numpy()
    assert sorted(set(frames.tolist())) == list(range(183))  # a face on every frame, no frame missing
    assert len(frames) == len(set(frames.tolist()))  # and none doubled (one face)
    assert set(rows.column("track_id").to_pylist()) == {0}  # one person, one id across 4 chunks
    assert rows.column("landmarks").type.value_type.bit_width == 32
    lines = (out / (src.name + ".jsonl")).read_text().splitlines()
    assert len(lines) == 183


def test_two_workers_split_the_chunks(full_run: tuple[Path, Path]) -> None:
    from facefleet.engine.queue import open_queue

    _, out = full_run
    q = open_queue(str(out / "_queue.sqlite"))
    try:
        units = [w["units"] for w in q.workers()]
    finally:
        q.close()
    assert len(units) >= 2 and sum(1 for u in units if u > 0) == 2, units
    import json

    report = json.loads((out / "video_summary.json").read_text())  # the report: per worker, over time
    assert len(report["workers"]) == 2 and sum(w["frames"] for w in report["workers"].values()) == 183
    assert sum(n for _, n in report["frames_per_second"]) == 183


def test_rerun_resumes_and_changes_nothing(full_run: tuple[Path, Path]) -> None:
    src, out = full_run
    parquet = out / (src.name + ".parquet")
    before = parquet.read_bytes()
    s = run_video([str(src)], out, _cfg(("parquet", "json", "anonymize")), quiet=True)
    assert s.exit_code == 0 and parquet.read_bytes() == before


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(full_run: tuple[Path, Path], tmp_path: Path) -> None:
    """kill -9 of a worker mid-video, then the same command again: the same rows and the same frames."""
    src, ref = full_run
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "facefleet", "video", str(src), "-o", str(out), "--quiet", "--devices", "cpu",
        "--workers", "2", "--cpu-threads", "1", "--batch-size", "4", "--lease-seconds", "5",
        "--video-chunk-frames", "60", "--video-overlap", "4", "--formats", "parquet,json,anonymize",
        "--video-preset", "ultrafast",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True)
    killed = False
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not killed:
            time.sleep(0.2)
            children = _children(proc.pid)
            if children and _chunk_files(out):  # a worker mid-video: one chunk done, others in flight
                os.kill(children[0], signal.SIGKILL)
                killed = True
        assert killed, "the run ended before a worker could be killed"
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert subprocess.run(cmd, timeout=300).returncode == 0
    name = src.name
    a = pq.read_table(ref / f"{name}.parquet").drop_columns(["video"])
    b = pq.read_table(out / f"{name}.parquet").drop_columns(["video"])
    assert a.column("frame").to_pylist() == b.column("frame").to_pylist()
    assert a.column("track_id").to_pylist() == b.column("track_id").to_pylist()
    la = np.asarray(a.column("landmarks").to_pylist())
    lb = np.asarray(b.column("landmarks").to_pylist())
    assert np.abs(la - lb).max() < 1e-3
    assert _frame_hashes(ref / f"{name}.anonymized.mp4") == _frame_hashes(out / f"{name}.anonymized.mp4")


def _chunk_files(out: Path) -> list[Path]:
    """The chunk tables a run has finished so far."""
    return list((out / "_chunks").rglob("*.parquet")) if (out / "_chunks").is_dir() else []


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        pytest.skip("pgrep not found")
    return [int(x) for x in out.split()]


def test_bad_videos_get_their_error_and_good_ones_complete(shared_data: Path, tmp_path: Path) -> None:
    good = shared_data / CLIP
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "text.mp4").write_text("not a video\n" * 100)
    data = good.read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 3])
    _audio_only(bad / "audio.mp4", good)
    (bad / "good.mp4").write_bytes(data)
    s = run_video([str(bad)], tmp_path / "out", _cfg(workers=1), quiet=True)
    assert s.exit_code == 1
    assert set(s.outputs) == {str(bad / "good.mp4")}
    reasons = {Path(k).name: v for k, v in s.errors.items()}
    assert set(reasons) == {"empty.mp4", "text.mp4", "truncated.mp4", "audio.mp4"}
    for name, reason in reasons.items():
        assert name in reason
    assert "empty" in reasons["empty.mp4"] or "0 bytes" in reasons["empty.mp4"]
    assert "audio" in reasons["audio.mp4"]
    assert pq.read_table(tmp_path / "out" / "good.mp4.parquet").num_rows >= 183


def _audio_only(dest: Path, src: Path) -> None:
    with av.open(str(src)) as i, av.open(str(dest), "w") as o:
        a = i.streams.audio[0]
        oa = o.add_stream_from_template(a)
        for p in i.demux(a):
            if p.dts is not None:
                p.stream = oa
                o.mux(p)


def test_changed_settings_are_refused_on_resume(shared_data: Path, tmp_path: Path) -> None:
    from facefleet.engine.layout import EngineError

    src = shared_data / CLIP
    cfg = _cfg(workers=1)
    out = tmp_path / "o"
    (out).mkdir()
    from facefleet.engine.video_job import _check_record

    _check_record(out, cfg, force=False)
    with pytest.raises(EngineError, match=r"video\.detect_every"):
        _check_record(out, _cfg(workers=1, detect_every=3), force=False)
    assert src.exists()


def _short_clip(src: Path, dest: Path, frames: int) -> None:
    """The first ``frames`` frames of ``src`` re-encoded (no audio): a quick video for a test."""
    with av.open(str(dest), "w") as o:
        s = o.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 512, 512, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i, _, rgb in decode_all(src):
            if i == frames:
                break
            for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                o.mux(p)
        for p in s.encode(None):
            o.mux(p)


def test_run_takes_videos_among_images(shared_data: Path, tmp_path: Path, astronaut: np.ndarray) -> None:
    """``facefleet run`` on a folder of photos and videos: the photos in the manifest, the videos through
    the video job into OUT/videos."""
    from PIL import Image

    from facefleet.entrypoints.cli.run import run_main

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(astronaut).save(src / "astronaut.jpg")
    _short_clip(shared_data / CLIP, src / "talk.mp4", 30)
    out = tmp_path / "out"
    code = run_main([str(src), "-o", str(out), "--devices", "cpu", "--workers", "1", "--quiet"])
    assert code == 0
    rows = pq.read_table(out / "videos" / "talk.mp4.parquet")
    assert sorted(set(rows.column("frame").to_pylist())) == list(range(30))
    from facefleet.engine.manifest import read_manifest

    assert read_manifest(out).column("source").to_pylist() == [str(src / "astronaut.jpg")]


def test_ids_are_stitched_without_a_lead_in(full_run: tuple[Path, Path], tmp_path: Path) -> None:
    """overlap 0: no frame is decoded twice, and the one face keeps one id across the chunks (matched by
    its boxes on the frames either side of each boundary)."""
    src, _ = full_run
    s = run_video([str(src)], tmp_path / "o", _cfg(workers=1, overlap=0), quiet=True)
    assert s.exit_code == 0
    rows = pq.read_table(tmp_path / "o" / (src.name + ".parquet"))
    assert rows.column("frame").to_pylist() == list(range(183))
    assert set(rows.column("track_id").to_pylist()) == {0}


def test_iter_video_gives_every_frame_in_order_with_one_track(shared_data: Path) -> None:
    """The Python API: one FrameResult per frame of the range asked for, in order, at its time, one
    person one id."""
    from facefleet.pipeline import Reconstructor
    from facefleet.video import iter_video

    rec = Reconstructor(refine=0)
    frames = list(iter_video(shared_data / CLIP, rec, start=100, count=20))
    assert [f.index for f in frames] == list(range(100, 120))
    assert all(f.track_ids == [0] for f in frames)
    assert frames[0].time == pytest.approx(100 / 25)


def test_external_workers_take_a_video_job_from_the_queue(shared_data: Path, tmp_path: Path) -> None:
    """``facefleet video --executor external`` lists the chunks and waits; ``facefleet worker --queue URL``
    (any host) builds its video workers from the job's record in the queue, and the job finishes the
    outputs."""
    import threading

    from facefleet.engine.queue import open_queue

    src = tmp_path / "talk.mp4"
    _short_clip(shared_data / CLIP, src, 40)
    out = tmp_path / "out"
    cfg = _cfg(workers=1)
    cfg = JobConfig(
        devices="cpu", cpu=cfg.cpu, video=cfg.video, run=RunConfig(lease_seconds=5.0, executor="external")
    )
    done: list[object] = []
    job = threading.Thread(target=lambda: done.append(run_video([str(src)], out, cfg, quiet=True)))
    job.start()
    queue = out / "_queue.sqlite"
    deadline = time.time() + 60
    while time.time() < deadline:
        if queue.exists():
            q = open_queue(str(queue))
            try:
                if q.get_meta("listing_done") == "1":
                    break
            finally:
                q.close()
        time.sleep(0.1)
    conf = tmp_path / "host.toml"
    conf.write_text("[cpu]\nworkers = 1\nthreads = 1\n")
    cmd = [sys.executable, "-m", "facefleet", "worker", "--queue", str(queue), "--out", str(out),
           "--devices", "cpu", "--config", str(conf)]  # fmt: skip
    assert subprocess.run(cmd, timeout=300).returncode == 0
    job.join(timeout=120)
    assert done and done[0].exit_code == 0  # type: ignore[attr-defined]
    rows = pq.read_table(out / "talk.mp4.parquet")
    assert sorted(set(rows.column("frame").to_pylist())) == list(range(40))


def test_force_redoes_a_video_on_a_postgres_queue(shared_data: Path, tmp_path: Path) -> None:
    """--force on a networked queue: its units are forgotten with OUT's files, so the video is done again
    (not finished from chunk files that --force removed)."""
    import uuid

    src = tmp_path / "talk.mp4"
    _short_clip(shared_data / CLIP, src, 20)
    url = f"postgresql://127.0.0.1:5432/test?schema=ffv_{uuid.uuid4().hex[:8]}"
    base = _cfg(workers=1)
    from facefleet.config import QueueConfig

    cfg = JobConfig(devices="cpu", cpu=base.cpu, run=base.run, video=base.video, queue=QueueConfig(url=url))
    out = tmp_path / "out"
    try:
        assert run_video([str(src)], out, cfg, quiet=True).exit_code == 0
        again = run_video([str(src)], out, cfg, quiet=True, force=True)
        assert again.exit_code == 0 and again.frames == 20
        assert pq.read_table(out / "talk.mp4.parquet").column("frame").to_pylist() == list(range(20))
    finally:
        from facefleet.engine.queue import open_queue

        q = open_queue(url)
        q.drop_schema()  # type: ignore[attr-defined]
        q.close()


def test_a_chunk_that_fails_every_attempt_fails_its_video_only(tmp_path: Path) -> None:
    """reap_poison (the coordinator's and every external host's) fails a poisoned chunk of a video
    without a photo manifest row (it read the unit's items as image paths and raised), and the job then
    names the video with the chunk's error."""
    from facefleet.engine.queue import open_queue
    from facefleet.engine.worker.poison import reap_poison
    from facefleet.sources.items import FrameRange

    q = open_queue(str(tmp_path / "q.sqlite"))
    try:
        chunk = FrameRange(str(tmp_path / "v.mp4"), 0, 30)
        q.add_units([("u1", (chunk,))])
        for _ in range(2):
            unit = q.claim("w", 30.0, 2)
            assert unit is not None
            q.release(unit.id, "w", f"{chunk.source}: frame 7 could not be decoded")
        done = reap_poison(q, tmp_path, 2)
        assert [(o.action, o.source) for o in done] == [("failed", chunk.source)]
        assert q.state_of("u1") == "failed" and "frame 7" in (q.last_error("u1") or "")
        assert not (tmp_path / "manifest").exists()
    finally:
        q.close()


def test_stop_drains_mid_video_and_a_rerun_finishes_it(shared_data: Path, tmp_path: Path) -> None:
    """``VideoStop`` (the service's cancel and shutdown): the first request drains (workers finish the
    chunks they hold, restart none), ``run_video`` returns interrupted with its progress reported; the
    same job run again finishes the video, every frame once."""
    import dataclasses

    from facefleet.engine.video_job import VideoProgress, VideoStop

    src = tmp_path / "talk.mp4"
    _short_clip(shared_data / CLIP, src, 180)  # 18 chunks; the worker holds 2 at a time (its batch)
    out = tmp_path / "out"
    cfg = _cfg(workers=1, chunk_frames=10, overlap=2)
    cfg = dataclasses.replace(cfg, cpu=dataclasses.replace(cfg.cpu, batch_size=2))
    stop, seen = VideoStop(), []

    def heard(p: VideoProgress) -> None:
        seen.append(p)
        if p.chunks_done >= 1 and not stop.drain.is_set():
            stop.request()  # once: a second request would kill the workers

    s = run_video([str(src)], out, cfg, quiet=True, stop=stop, on_progress=heard)
    assert s.interrupted and s.exit_code == 130 and not s.outputs
    last = seen[-1]
    assert last.total == 180 and last.chunks >= 6
    assert 1 <= last.chunks_done < last.chunks, last  # drained: the chunks held were finished, no more
    assert 0 < last.frames == last.new_frames < 180
    assert not stop.kill.is_set()

    again: list[VideoProgress] = []
    s = run_video([str(src)], out, cfg, quiet=True, on_progress=again.append)
    assert s.exit_code == 0 and s.frames == 180
    assert again[-1].frames == 180 and again[-1].new_frames == 180 - last.frames  # only the rest
    rows = pq.read_table(out / "talk.mp4.parquet").column("frame").to_pylist()
    assert sorted(set(rows)) == list(range(180)) and len(rows) == len(set(rows))  # one face, once a frame


def test_ctrl_c_drains_and_the_same_command_resumes(shared_data: Path, tmp_path: Path) -> None:
    """Ctrl-C on ``facefleet video``: the workers finish the chunks they hold, the command exits 130 with
    chunks left and says how to resume; the same command again finishes the video, every frame once."""
    src = tmp_path / "talk.mp4"
    _short_clip(shared_data / CLIP, src, 180)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "facefleet", "video", str(src), "-o", str(out), "--devices", "cpu",
        "--workers", "1", "--cpu-threads", "1", "--batch-size", "2", "--video-chunk-frames", "10",
        "--video-overlap", "2",
    ]  # fmt: skip
    # a shell's background jobs ignore SIGINT: give the command its default handler back
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while not _chunk_files(out):
            assert proc.poll() is None and time.time() < deadline, "no chunk was done"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # one chunk done, 17 to go: 2 held, finished by the drain
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; run the same command again to resume" in err
    assert not (out / "talk.mp4.parquet").exists()
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    rows = pq.read_table(out / "talk.mp4.parquet").column("frame").to_pylist()
    assert rows == list(range(180))  # one face a frame, each frame once, in order
