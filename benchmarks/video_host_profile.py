"""Where a video worker's host time goes: :class:`facefleet.video.chunks.ChunkRunner` in this process on
the chunks of one video, under cProfile; prints frames/s and the functions with the most own time.

    python benchmarks/video_host_profile.py VIDEO [--device cpu] [--streams 20] [--chunk 30] [--frames 600]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time

from facefleet.config import VideoConfig
from facefleet.io.video import plan_chunks, probe_video
from facefleet.pipeline import Reconstructor
from facefleet.sources.items import FrameRange
from facefleet.video.chunks import ChunkRunner


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("video")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--chunk", type=int, default=30)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--formats", default="parquet")
    p.add_argument("--top", type=int, default=35)
    p.add_argument("--no-profile", action="store_true")
    a = p.parse_args()
    rec = Reconstructor(device=a.device, precision=a.precision)
    rec.warmup()
    info = probe_video(a.video)
    chunks = [c for c in plan_chunks(info, a.chunk) if c.start < a.frames]
    todo = [(f"u{k}", c) for k, c in enumerate(chunks)]
    video = VideoConfig(formats=tuple(a.formats.split(",")))
    out = tempfile.mkdtemp()
    runner = ChunkRunner(rec, video, out, streams=a.streams)
    frames = 0

    def done(uid: str, item: FrameRange, stats: dict) -> None:
        nonlocal frames
        frames += int(stats["frames"])

    def failed(uid: str, item: FrameRange, e: BaseException) -> None:
        raise e

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    if not a.no_profile:
        prof.enable()
    runner.run(lambda: todo.pop(0) if todo else None, done, failed)
    prof.disable()
    dt = time.perf_counter() - t0
    print(f"{frames} frames in {dt:.2f} s: {frames / dt:.1f} frames/s, {len(chunks)} chunks")
    if not a.no_profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(a.top)


if __name__ == "__main__":
    main()
