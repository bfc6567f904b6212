"""``python -m facefleet.bench``: the same as ``facefleet bench``."""

from __future__ import annotations

import sys

from facefleet.bench.bench import bench_cli

if __name__ == "__main__":
    sys.exit(bench_cli(sys.argv[1:]))
