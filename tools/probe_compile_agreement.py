"""Do torch.compile's fused kernels give the same faces as the eager ones? (GPU host)

Usage: python tools/probe_compile_agreement.py --corpus DIR [--images 256] [--photos DIR]

Runs ``Reconstructor(device="cuda", precision="fp16")`` with ``compiled=False`` and ``compiled=True``
on the same JPEGs (the bench corpus, plus the photos of ``../shared/data/images`` when present), texture
on, and prints how many faces each found, on how many images the face count agrees, and the largest
landmark x/y difference per face (median, p99, max, in pixels) and the mean texture difference.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from facefleet.io.gpu_decode import decode_images
from facefleet.pipeline import Reconstructor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--images", type=int, default=256)
    shared = Path(os.environ.get("FACEFLEET_SHARED_DATA", "../shared/data")) / "images"
    ap.add_argument("--photos", default=str(shared), help="more JPEGs (skipped when absent)")
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    files = sorted(str(p) for p in Path(a.corpus).rglob("*.jpg"))[: a.images]
    if Path(a.photos).is_dir():
        files += sorted(str(p) for p in Path(a.photos).rglob("*.jpg"))
    dev = torch.device("cuda")
    out = {}
    for compiled in (False, True):
        rec = Reconstructor(device=dev, precision="fp16", compiled=compiled)
        rec.warmup()
        results = []
        for s in range(0, len(files), a.batch):
            chunk = files[s : s + a.batch]
            decoded = decode_images([Path(f).read_bytes() for f in chunk], chunk, dev)
            results += rec.reconstruct_tensors(list(decoded.items), chunk, texture=True)
        out[compiled] = results
    eager, comp = out[False], out[True]
    same = sum(len(x.faces) == len(y.faces) for x, y in zip(eager, comp, strict=True))
    d, t = [], []
    for x, y in zip(eager, comp, strict=True):
        for fx, fy in zip(x.faces, y.faces, strict=False):
            d.append(float(np.abs(fx.landmarks[:, :2] - fy.landmarks[:, :2]).max()))
            if fx.texture is not None and fy.texture is not None:
                t.append(float(np.abs(fx.texture.astype(np.int16) - fy.texture.astype(np.int16)).mean()))
    print(f"{len(files)} images: faces eager {sum(len(x.faces) for x in eager)}, compiled "
          f"{sum(len(y.faces) for y in comp)}; same face count on {same}")  # fmt: skip
    if d:
        dd = np.array(d)
        print(
            f"largest landmark x/y difference per face: median {np.median(dd):.3f} px, "
            f"p99 {np.percentile(dd, 99):.3f} px, max {dd.max():.3f} px; "
            f"texture mean |diff| {np.mean(t):.3f}"
        )


if __name__ == "__main__":
    main()
