"""``facefleet run INPUT -o OUT ...``: the batch engine's command line."""

from __future__ import annotations

import argparse
import sys

FORMATS = ("json", "obj", "glb", "png", "overlay")


def _formats(text: str) -> list[str]:
    fmts = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = sorted(set(fmts) - set(FORMATS))
    if bad:
        raise argparse.ArgumentTypeError(f"unknown format(s) {bad}; choose from {','.join(FORMATS)}")
    return fmts


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser(prog: str = "facefleet run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Reconstruct every face of a folder, glob, list file or bucket of images with every "
        "device of this host. Writes a Parquet manifest (OUT/manifest), per-image files (OUT/files) and a "
        "report (OUT/report.html). Re-running the same command resumes; --force starts over.",
    )
    p.add_argument(
        "input", metavar="INPUT", help="directory (recursive), glob, text file of paths, or fsspec URL"
    )
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output directory")
    p.add_argument("--devices", default="auto", help="all | cpu | auto (default: every GPU, else CPU) | 0,1")
    p.add_argument("--workers", type=_positive, default=None, help="CPU mode: number of worker processes")
    p.add_argument(
        "--gpu-workers",
        type=_positive,
        default=None,
        metavar="N",
        help="worker processes per GPU (default: the GPU profile)",
    )
    p.add_argument("--formats", type=_formats, default=[], help=f"per-image files among {','.join(FORMATS)}")
    p.add_argument(
        "--batch-size", type=_positive, default=None, help="images per batch (default: GPU profile)"
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        default=None,
        help="network precision (default: GPU profile; fp32 on CPU)",
    )
    p.add_argument("--unit-size", type=_positive, default=None, help="images per unit of work (default 256)")
    p.add_argument(
        "--config", default=None, metavar="FILE", help="TOML config file ([run], [model], [gpu], [cpu])"
    )
    p.add_argument("--force", action="store_true", help="clear OUT's queue and manifest and redo everything")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--log-json", default=None, metavar="FILE", help="append JSON-lines events to FILE")
    p.add_argument("--model-dir", default=None, metavar="D", help="folder with the MediaPipe model files")
    p.add_argument("--texture-size", type=_positive, default=512, help="UV texture side in texels")
    from facefleet.cli import add_pipeline_options

    add_pipeline_options(p, max_faces=None)  # unset: the config file's [model], else the defaults
    p.add_argument("--lease-seconds", type=float, default=None, help="work lease (default 30)")
    p.add_argument(
        "--max-attempts", type=_positive, default=None, help="attempts before a unit fails (default 3)"
    )
    p.add_argument(
        "--reconstructor",
        default=None,
        metavar="MODULE:CALLABLE",
        help="advanced: build each worker's pipeline with this callable "
        "(default facefleet.pipeline:Reconstructor)",
    )
    return p


def run_cli(argv: list[str]) -> int:
    """Exit codes: 0 all images done, 1 done but some images failed, 2 error, 130 interrupted."""
    args = build_parser().parse_args(argv)
    from facefleet.cli import pipeline_kwargs
    from facefleet.engine.runner import EngineError, run

    try:
        summary = run(
            args.input,
            args.out,
            devices=args.devices,
            formats=args.formats,
            batch_size=args.batch_size,
            precision=args.precision,
            unit_size=args.unit_size,
            workers=args.workers,
            gpu_workers=args.gpu_workers,
            config=args.config,
            force=args.force,
            quiet=args.quiet,
            log_json=args.log_json,
            lease_seconds=args.lease_seconds,
            max_attempts=args.max_attempts,
            model_dir=args.model_dir,
            texture_size=args.texture_size,
            reconstructor=args.reconstructor,
            model=pipeline_kwargs(args),
        )
    except EngineError as e:
        print(f"facefleet run: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad config values
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
    return summary.exit_code


def main() -> None:  # python -m facefleet.engine.cli
    sys.exit(run_cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
