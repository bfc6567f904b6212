"""Make the README pictures from the bundled sample: an overlay crop and a render of the textured
mesh seen from 35 degrees to the side (a small z-buffer rasteriser written here, so the docs need
no 3D package).

    python scripts/render_readme.py [--out docs/images]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from facefleet.export import render_overlay, write_png
from facefleet.geometry import euler_to_matrix, load_geometry
from facefleet.pipeline import Reconstructor


def render(
    vertices: np.ndarray, tri: np.ndarray, uv: np.ndarray, texture: np.ndarray, size: int
) -> np.ndarray:
    """Shaded, textured render (size, size, 3) of a mesh given in image coordinates (y down, z to camera)."""
    import torch

    v = vertices - vertices.mean(0)
    rot = euler_to_matrix(torch.tensor([35.0]), torch.tensor([10.0]), torch.tensor([0.0]))[0].numpy()
    p = v * np.array([1.0, -1.0, 1.0])  # to a right-handed y-up frame
    p = p @ rot.T
    scale = 0.8 * size / np.ptp(p[:, :2], axis=0).max()
    xy = np.stack([p[:, 0] * scale + size / 2, -p[:, 1] * scale + size / 2], 1)
    z = p[:, 2]
    img = np.full((size, size, 3), 245, np.float64)
    zbuf = np.full((size, size), -np.inf)
    light = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
    th, tw = texture.shape[:2]
    for a, b, c in tri:
        pa, pb, pc = xy[a], xy[b], xy[c]
        det = (pb[0] - pa[0]) * (pc[1] - pa[1]) - (pc[0] - pa[0]) * (pb[1] - pa[1])
        if abs(det) < 1e-9:
            continue
        n = np.cross(p[b] - p[a], p[c] - p[a])
        n = n / (np.linalg.norm(n) + 1e-12)
        shade = 0.35 + 0.65 * abs(float(n @ light))
        x0, x1 = (
            int(max(0, np.floor(min(pa[0], pb[0], pc[0])))),
            int(min(size - 1, np.ceil(max(pa[0], pb[0], pc[0])))),
        )
        y0, y1 = (
            int(max(0, np.floor(min(pa[1], pb[1], pc[1])))),
            int(min(size - 1, np.ceil(max(pa[1], pb[1], pc[1])))),
        )
        if x1 < x0 or y1 < y0:
            continue
        gx, gy = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        w1 = ((gx - pa[0]) * (pc[1] - pa[1]) - (pc[0] - pa[0]) * (gy - pa[1])) / det
        w2 = ((pb[0] - pa[0]) * (gy - pa[1]) - (gx - pa[0]) * (pb[1] - pa[1])) / det
        w0 = 1 - w1 - w2
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        zz = w0 * z[a] + w1 * z[b] + w2 * z[c]
        ys, xs = np.nonzero(inside)
        ys, xs = ys + y0, xs + x0
        zi = zz[inside]
        closer = zi > zbuf[ys, xs]
        ys, xs, zi = ys[closer], xs[closer], zi[closer]
        uu = (w0 * uv[a, 0] + w1 * uv[b, 0] + w2 * uv[c, 0])[inside][closer]
        vv = (w0 * uv[a, 1] + w1 * uv[b, 1] + w2 * uv[c, 1])[inside][closer]
        texel = texture[np.clip((vv * th).astype(int), 0, th - 1), np.clip((uu * tw).astype(int), 0, tw - 1)]
        col = np.where(texel[:, 3:] > 0, texel[:, :3], 200)  # texels the photo never saw: plain grey
        zbuf[ys, xs] = zi
        img[ys, xs] = col * shade
    return np.clip(img, 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    args = ap.parse_args()
    image = np.ascontiguousarray(data.astronaut())
    res = Reconstructor(device="cpu")([image], texture=True)[0]
    face = res.faces[0]
    geo = load_geometry()
    over = render_overlay(image, res.faces, geo.triangles)
    x0, y0, x1, y1 = face.bbox
    cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, 1.5 * max(x1 - x0, y1 - y0)
    crop = Image.fromarray(over).crop((int(cx - s), int(cy - s), int(cx + s), int(cy + s))).resize((400, 400))
    write_png(args.out / "astronaut_overlay.png", np.asarray(crop))
    assert face.texture is not None
    write_png(
        args.out / "astronaut_mesh.png", render(face.landmarks, geo.triangles, geo.uv, face.texture, 400)
    )
    print(f"wrote {args.out}/astronaut_overlay.png and astronaut_mesh.png")


if __name__ == "__main__":
    main()
