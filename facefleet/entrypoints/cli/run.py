"""``facefleet run INPUT -o OUT ...``: the batch engine's command line. Every setting's flag is
generated from :mod:`facefleet.config`; the options here are the command's own (what to run, where,
how to report)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from facefleet.config import add_config_arguments
from facefleet.entrypoints.cli.options import parse_job


def build_parser(prog: str = "facefleet run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} INPUT -o OUT [options]",
        description="Reconstruct every face of a folder, glob, list file or bucket of images with every "
        "device of this host. Writes a Parquet manifest (OUT/manifest), per-image files (OUT/files) and a "
        "report (OUT/report.html). Re-running the same command resumes; --force starts over.",
    )
    p.add_argument(
        "input", metavar="INPUT", help="directory (recursive), glob, text file of paths, or fsspec URL"
    )
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output directory")
    p.add_argument("--force", action="store_true", help="clear OUT's queue and manifest and redo everything")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--log-json", default=None, metavar="FILE", help="append JSON-lines events to FILE")
    add_config_arguments(p)
    return p


def run_main(argv: list[str]) -> int:
    """Exit codes: 0 all images done, 1 done but some images failed, 2 error, 130 interrupted."""
    parsed = parse_job(build_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    from facefleet.engine.engine import check_input, run
    from facefleet.engine.layout import EngineError
    from facefleet.engine.video_job import videos_in

    # videos among the images go through the video job, into OUT/videos (as facefleet video does)
    videos = videos_in(args.input)
    code = 0
    try:
        if videos:
            try:
                check_input(args.input)
            except EngineError:  # videos only: no photo job
                return _run_videos(videos, args, cfg)
            code = _run_videos(videos, args, cfg)
        summary = run(
            args.input, args.out, config=cfg, quiet=args.quiet, force=args.force, log_json=args.log_json
        )
    except (EngineError, ValueError) as e:  # ValueError: a setting the engine refused
        print(f"facefleet run: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        s = summary
        state = "interrupted; run the same command again to resume" if s.interrupted else "done"
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.failed_by_reason.items()))
        print(
            f"facefleet run: {state}: {s.images} images, {s.faces} faces, {s.no_face} without a face, "
            f"{s.failed} failed{f' ({reasons})' if reasons else ''} in {s.seconds:.1f} s -> {s.out_dir}",
            file=sys.stderr,
        )
    return max(summary.exit_code, code)


def _run_videos(videos: list[str], args: argparse.Namespace, cfg: Any) -> int:
    """The videos of INPUT through :func:`facefleet.engine.video_job.run_video` into OUT/videos."""
    from pathlib import Path

    from facefleet.engine.video_job import run_video

    s = run_video(videos, Path(args.out) / "videos", cfg, quiet=args.quiet, force=args.force)
    if not args.quiet:
        print(
            f"facefleet run: videos: {len(s.outputs)} done, {s.frames} frames, {s.faces} faces, "
            f"{len(s.errors)} failed -> {s.out_dir}",
            file=sys.stderr,
        )
    return s.exit_code
