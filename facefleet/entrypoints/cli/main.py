"""``facefleet COMMAND ...``: the subcommands and where each lives. A subcommand's module is imported
when it runs, and parses its own arguments (``facefleet COMMAND -h``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

#: subcommand -> ("module:function" of this package, taking argv and returning the exit code; help)
COMMANDS: dict[str, tuple[str, str]] = {
    "reconstruct": ("reconstruct:reconstruct_main", "reconstruct the faces of images into OUT"),
    "demo": ("reconstruct:demo_main", "run the whole pipeline on a bundled sample portrait"),
    "run": ("run:run_main", "batch engine over a folder/list/URL on all GPUs (facefleet run -h)"),
    "video": ("video:video_main", "faces tracked through videos: Parquet, overlay, anonymised MP4 (-h)"),
    "worker": ("worker:worker_main", "a worker of a shared queue, on any host (facefleet worker -h)"),
    "serve": ("serve:serve_main", "REST service + browser UI: warm GPU workers, jobs, API keys (-h)"),
    "keys": ("serve:keys_main", "create, list or revoke the API keys of facefleet serve"),
    "report": ("report:report_main", "rebuild a run's stats and report from its queue (external workers)"),
    "models": ("models:models_main", "fetch|list|path the MediaPipe weights (facefleet models -h)"),
    "bench": ("bench:bench_main", "throughput benchmark with baselines (facefleet bench -h)"),
    "bench-core": ("bench:bench_core_main", "speed of networks and pipeline per device, CPU/GPU agreement"),
    "eval": ("bench:eval_main", "accuracy benchmark on AFLW2000-3D and recall (facefleet eval -h)"),
}


def _parser() -> argparse.ArgumentParser:
    from facefleet import __version__

    p = argparse.ArgumentParser(
        prog="facefleet",
        description="GPU-fast 3D face reconstruction: photos -> textured meshes, landmarks, head pose.",
    )
    p.add_argument("--version", action="version", version=f"facefleet {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def command(name: str) -> Callable[[list[str]], int]:
    """The function of subcommand ``name`` (its module imported now)."""
    module, _, func = COMMANDS[name][0].partition(":")
    fn: Callable[[list[str]], int] = getattr(importlib.import_module(f"{__package__}.{module}"), func)
    return fn


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv[:1])  # --help, --version, or "invalid choice" (exit 2)
        return 2
    try:
        return int(command(argv[0])(argv[1:]))
    except KeyboardInterrupt:
        print("facefleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
