"""The ``facefleet`` command. Subcommands import their modules lazily, so ``facefleet --help``
is instant and nothing initialises CUDA before it is needed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("json", "obj", "glb", "png", "overlay")


def _formats(text: str) -> set[str]:
    fmts = {f.strip().lower() for f in text.split(",") if f.strip()}
    bad = fmts - set(FORMATS)
    if bad:
        raise argparse.ArgumentTypeError(f"unknown format(s) {sorted(bad)}; choose from {','.join(FORMATS)}")
    return fmts


def _add_model_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="folder with the MediaPipe .tflite files or the mediapipe wheel (air-gapped machines); "
        "default: $FACEFLEET_MODEL_DIR, then the cache",
    )


def add_pipeline_options(p: argparse.ArgumentParser, *, max_faces: int | None = 16) -> None:
    """The detection and mesh options of the pipeline (``facefleet reconstruct``, ``run``, ``eval``).
    ``max_faces=None``: every option defaults to None (unset: a config file or the pipeline decides)."""
    unset = max_faces is None
    p.add_argument(
        "--detector",
        default=None if unset else "auto",
        choices=["auto", "short", "full"],
        help="auto (default): both BlazeFace models, tiles for large or crowded images; short: the "
        "short-range model only (faces within ~2 m; faster, misses small and distant faces); full: the "
        "full-range model only",
    )
    p.add_argument(
        "--refine",
        type=int,
        default=None if unset else 2,
        metavar="N",
        help="extra mesh passes on the previous pass's landmarks (default 2; 0: faster, less accurate)",
    )
    p.add_argument("--max-faces", type=int, default=max_faces, help=f"per image (default {max_faces or 16})")
    p.add_argument("--min-score", type=float, default=None if unset else 0.5, help="detector score threshold")


def pipeline_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The :class:`facefleet.pipeline.Reconstructor` arguments of :func:`add_pipeline_options` that
    are set."""
    names = ("detector", "refine", "max_faces", "min_score")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _add_recon_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument(
        "--formats",
        type=_formats,
        default={"json", "obj", "overlay"},
        help=f"comma-separated outputs among {','.join(FORMATS)} (default json,obj,overlay)",
    )
    add_pipeline_options(p)
    p.add_argument("--texture-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    _add_model_opts(p)


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from facefleet.reconstruct_cmd import reconstruct_paths

    return reconstruct_paths(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from facefleet.reconstruct_cmd import demo

    return demo(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Subcommands with their own parsers (owned by their modules).
    if argv and argv[0] == "models":
        from facefleet.models.cli import models_cli

        return models_cli(argv[1:])
    if argv and argv[0] == "run":
        from facefleet.engine.cli import run_cli

        return run_cli(argv[1:])
    if argv and argv[0] == "bench":
        from facefleet.bench.bench import bench_cli

        return bench_cli(argv[1:])
    if argv and argv[0] == "bench-core":
        from facefleet.bench.core import main as bench_core

        return bench_core(argv[1:])
    if argv and argv[0] == "eval":
        from facefleet.bench.accuracy import eval_cli

        return eval_cli(argv[1:])

    parser = argparse.ArgumentParser(
        prog="facefleet",
        description="GPU-fast 3D face reconstruction: photos -> textured meshes, landmarks, head pose.",
    )
    from facefleet import __version__

    parser.add_argument("--version", action="version", version=f"facefleet {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    p = sub.add_parser("reconstruct", help="reconstruct the faces of images into OUT")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    _add_recon_opts(p)
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser("demo", help="run the whole pipeline on a bundled sample portrait")
    p.add_argument("-o", "--out", type=Path, default=Path("facefleet-demo"), help="output folder")
    _add_recon_opts(p)
    p.set_defaults(func=_cmd_demo, formats=set(FORMATS))

    sub.add_parser("models", help="fetch|list|path the MediaPipe weights (facefleet models -h)")
    sub.add_parser("run", help="batch engine over a folder/list/URL on all GPUs (facefleet run -h)")
    sub.add_parser("bench", help="throughput benchmark with baselines (facefleet bench -h)")
    sub.add_parser("bench-core", help="speed of networks and pipeline per device, CPU/GPU agreement")
    sub.add_parser("eval", help="accuracy benchmark on AFLW2000-3D and recall (facefleet eval -h)")

    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("facefleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
