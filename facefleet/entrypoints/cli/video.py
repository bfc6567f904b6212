"""``facefleet video IN... -o OUT ...``: videos through the engine (chunks of frames as units of its
queue, workers on every device). Every setting's flag comes from :mod:`facefleet.config`;
``--formats`` and ``--anonymize`` are the ``[video]`` settings of the same names."""

from __future__ import annotations

import argparse
import sys

from facefleet.config import add_config_arguments
from facefleet.config.flags import all_keys
from facefleet.entrypoints.cli.options import parse_job


def build_parser(prog: str = "facefleet video") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} IN [IN ...] -o OUT [options]",
        description="Track and reconstruct every face of every frame of videos with every device of this "
        "host. Per video: Parquet rows per face per frame (OUT/NAME.parquet), and on request a JSON line per "
        "frame, an overlay MP4 and an anonymised MP4 with the input's frames, timing and audio. Re-running "
        "the same command resumes; --force starts over.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IN",
        help="video files, folders (recursive), globs or list files of paths",
    )
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output directory")
    p.add_argument("--force", action="store_true", help="clear OUT's queue and chunks and redo everything")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    # --formats and --anonymize mean the [video] settings here (the photos' [run] formats has no flag)
    skip = {"run.formats", "video.formats", "video.anonymize"}
    aliases = ("--batch-size", "--precision", "--workers", "--formats", "--anonymize")
    add_config_arguments(p, [k for k in all_keys() if k not in skip], aliases=aliases)
    return p


def video_main(argv: list[str]) -> int:
    """Exit codes: 0 every video done, 1 some failed, 2 error, 130 interrupted."""
    parsed = parse_job(build_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    from facefleet.engine.layout import EngineError
    from facefleet.engine.video_job import run_video

    try:
        s = run_video(args.inputs, args.out, cfg, quiet=args.quiet, force=args.force)
    except (EngineError, ValueError) as e:
        print(f"facefleet video: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        for src, files in s.outputs.items():
            print(f"{src}:", file=sys.stderr)
            for fmt, path in files.items():
                print(f"  {fmt}: {path}", file=sys.stderr)
        state = "interrupted; run the same command again to resume" if s.interrupted else "done"
        print(
            f"facefleet video: {state}: {len(s.outputs)} videos, {s.frames} frames, {s.faces} faces, "
            f"{len(s.errors)} failed in {s.seconds:.1f} s -> {s.out_dir}",
            file=sys.stderr,
        )
    return s.exit_code
