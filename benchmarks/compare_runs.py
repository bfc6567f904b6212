"""Two runs' manifests side by side: the same images and faces, and how far their values differ.

Usage: python benchmarks/compare_runs.py OUT_A OUT_B

Prints the images and faces of each run, the (source, face) keys found in one run only, and the largest
absolute difference per face of the landmarks and boxes (pixels): median, p99 and max over the faces of
both. Exit status 1 when the images or faces differ.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from facefleet.engine import read_manifest


def _faces(out: str) -> tuple[set[str], dict[tuple[str, int], dict[str, object]]]:
    rows = read_manifest(out).to_pylist()
    return {str(r["source"]) for r in rows}, {
        (str(r["source"]), int(r["face_index"])): r for r in rows if r["landmarks"] is not None
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    (src_a, fa), (src_b, fb) = _faces(args.a), _faces(args.b)
    print(f"images {len(src_a)} / {len(src_b)}, faces {len(fa)} / {len(fb)}")
    only_a, only_b = sorted(fa.keys() - fb.keys()), sorted(fb.keys() - fa.keys())
    if only_a or only_b:
        print(f"faces in one run only: {len(only_a)} / {len(only_b)}, e.g. {(only_a + only_b)[:3]}")
    both = sorted(fa.keys() & fb.keys())
    for col in ("landmarks", "bbox"):
        d = np.array([np.abs(np.subtract(fa[k][col], fb[k][col])).max() for k in both] or [0.0])
        print(f"{col}: largest difference per face, median {np.median(d):.3f}, p99 "
              f"{np.percentile(d, 99):.3f}, max {d.max():.3f} px")  # fmt: skip
    sys.exit(1 if src_a != src_b or only_a or only_b else 0)


if __name__ == "__main__":
    main()
