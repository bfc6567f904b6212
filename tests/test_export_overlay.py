"""Overlay rendering, PNG and JSON writers."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facefleet.export import OverlayFace, pose_axes_2d, render_overlay, result_to_json, write_json, write_png
from facefleet.types import Face, ImageResult, Pose


def _grid_face(size: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(468, 3) landmarks on an 18 x 26 grid, triangles, bbox and 6 keypoints, centred in a
    square image of ``size`` pixels, spanning ``0.4 * size``."""
    n_x, n_y = 18, 26
    s = 0.4 * size * scale
    gx, gy = np.meshgrid(np.linspace(-0.5, 0.5, n_x), np.linspace(-0.5, 0.5, n_y))
    lm = np.stack([size / 2 + s * gx, size / 2 + s * gy, np.zeros_like(gx)], axis=-1).reshape(-1, 3)
    assert len(lm) == 468
    idx = np.arange(n_x * n_y).reshape(n_y, n_x)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tris = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    bbox = np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()])
    kps = lm[[100, 110, 1, 300, 0, 17], :2]
    return lm, tris, bbox, kps


def test_overlay_draws_mesh_edges_and_keeps_size() -> None:
    size = 512
    image = np.full((size, size, 3), 40, np.uint8)
    lm, tris, bbox, kps = _grid_face(size)
    out = render_overlay(image, [(lm, tris, bbox, None, kps)])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, np.full((size, size, 3), 40, np.uint8))  # input untouched
    # midpoints of a sample of mesh edges changed (brighter: white, semi-transparent)
    a, b = lm[tris[::7, 0], :2], lm[tris[::7, 1], :2]
    mids = np.round((a + b) / 2).astype(int)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    # 1-pixel lines: look in the 3x3 neighbourhood of each midpoint
    near = np.stack([out[mids[:, 1] + dy, mids[:, 0] + dx].astype(int).sum(axis=1) for dy, dx in shifts])
    near = near.max(axis=0)
    assert (near > 3 * 40 + 150).all()
    # semi-transparent: the wireframe alone is not pure white
    wire_only = render_overlay(image, [(lm, tris)])
    assert 40 + 60 < wire_only.max() < 255
    # far from the face nothing changes
    assert (out[:60, :60] == 40).all()
    # inside a grid cell, away from its edges, the background shows through
    cell = np.round(lm[0, :2] + (lm[19, :2] - lm[0, :2]) / 2).astype(int)
    assert (out[cell[1], cell[0]] == 40).all()


def test_overlay_scales_with_image_size() -> None:
    box_w, wire_w = [], []
    for size in (512, 4000):
        image = np.zeros((size, size, 3), np.uint8)
        lm, tris, bbox, _ = _grid_face(size)
        box = render_overlay(image, [OverlayFace(None, None, bbox)])
        box_w.append(int((box[size // 2, : size // 2].sum(axis=1) > 0).sum()))  # crosses the left edge
        wire = render_overlay(image, [OverlayFace(lm, tris)])
        # across the leftmost vertical wire, a sixth of a cell below a vertex row (clear of diagonals)
        x0, y0, sp = lm[0, 0], lm[18 * 12, 1], lm[1, 0] - lm[0, 0]
        seg = wire[round(y0 + sp / 6), round(x0 - sp / 3) : round(x0 + sp / 3)]
        wire_w.append(int((seg.sum(axis=1) > 0).sum()))
    assert box_w[0] >= 2 and box_w[1] > 3 * box_w[0]
    assert 1 <= wire_w[0] <= 2 and wire_w[1] > 2 * wire_w[0]
    assert wire_w[1] < box_w[1]  # the wireframe stays thin


def test_pose_axes_colours_from_nose_tip() -> None:
    size = 512
    image = np.zeros((size, size, 3), np.uint8)
    lm = _grid_face(size)[0]
    nose = lm[1, :2]
    out = render_overlay(image, [OverlayFace(lm, None, None, (0.0, 0.0, 0.0), None)], axis_scale=0.6)
    face = 0.4 * size
    x_pt = np.round(nose + np.array([0.3 * face, 0])).astype(int)  # x axis to the right
    y_pt = np.round(nose + np.array([0, -0.3 * face])).astype(int)  # y axis up in the picture
    r, g, b = out[x_pt[1], x_pt[0]].astype(int)
    assert r > 150 and g < 100 and b < 100
    r, g, b = out[y_pt[1], y_pt[0]].astype(int)
    assert g > 150 and r < 100
    # a rolled head rotates the drawn x axis
    dirs = pose_axes_2d((0.0, 0.0, 30.0))
    assert math.isclose(math.degrees(math.atan2(-dirs[0, 1], dirs[0, 0])), 30.0, abs_tol=1e-6)
    # a matrix with scale gives unit directions
    m = np.eye(4)
    m[:3, :3] = 5.0 * np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(pose_axes_2d(m), [[0, 1], [-1, 0], [0, 0]], atol=1e-12)


def test_overlay_accepts_face_objects(astronaut: np.ndarray) -> None:
    lm, tris, bbox, kps = _grid_face(512)
    face = Face(
        bbox=bbox,
        score=0.9,
        keypoints=kps,
        landmarks=lm,
        landmarks68=lm[:68, :2],
        pose=Pose(0.0, 0.0, 0.0, np.diag([100.0, 100.0, 100.0, 1.0])),
    )
    out = render_overlay(astronaut, [face], tris)
    assert out.shape == astronaut.shape
    assert (out != astronaut).any(axis=2).mean() > 0.01
    with pytest.raises(ValueError):
        render_overlay(astronaut[..., 0], [face], tris)


def test_write_png_roundtrip_atomic(tmp_path: Path, astronaut: np.ndarray) -> None:
    p = write_png(tmp_path / "sub" / "o.png", astronaut)
    assert np.array_equal(np.asarray(Image.open(p)), astronaut)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 7, np.uint8)])
    assert np.array_equal(np.asarray(Image.open(write_png(p, rgba, compress_level=1))), rgba)
    with pytest.raises(ValueError):
        write_png(tmp_path / "f.png", astronaut.astype(np.float32))
    assert sorted(x.name for x in (tmp_path / "sub").iterdir()) == ["o.png"]


def test_write_json_follows_contract(tmp_path: Path) -> None:
    lm, _, bbox, kps = _grid_face(512)
    face = Face(
        bbox=bbox,
        score=0.987654321,
        keypoints=kps,
        landmarks=lm,
        landmarks68=lm[:68, :2],
        pose=Pose(10.0, -5.0, float("nan"), np.eye(4)),
    )
    result = ImageResult(source="photos/a.jpg", width=512, height=512, faces=[face])
    p = write_json(tmp_path / "out" / "a.json", result)
    data = json.loads(p.read_text())
    assert data["source"] == "photos/a.jpg" and data["error"] is None
    f = data["faces"][0]
    assert len(f["landmarks"]) == 468 and len(f["landmarks68"]) == 68 and len(f["keypoints"]) == 6
    assert f["pose"]["yaw"] == 10.0 and f["pose"]["roll"] is None  # NaN -> null (strict JSON)
    assert "NaN" not in p.read_text()
    err = json.loads(result_to_json(ImageResult("b.png", 0, 0, error="b.png: truncated file")))
    assert err["faces"] == [] and err["error"] == "b.png: truncated file"


@pytest.mark.parametrize("deflate", ["best available", "zlib"])
def test_fast_png_decodes_to_the_same_pixels(
    deflate: str, astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The level-1 encoder (Sub filter + fast deflate) writes PNGs that Pillow decodes exactly, for gray,
    RGB and RGBA, odd sizes and noise, with ISA-L or the standard library's zlib."""
    import zlib

    from facefleet.export import png as png_mod

    if deflate == "zlib":
        monkeypatch.setattr(png_mod, "_deflate", lambda: (zlib.compress, 1))
    rng = np.random.default_rng(0)
    rgba = np.dstack([astronaut[:301, :257], rng.integers(0, 256, (301, 257, 1), dtype=np.uint8)])
    for a in (
        rgba,
        astronaut[:7, :1],
        astronaut[:50, :33, 0],
        rng.integers(0, 256, (3, 5, 4), dtype=np.uint8),
    ):
        data = png_mod.encode_png(a, compress_level=1)
        assert data == png_mod.encode_png_fast(a if a.ndim == 3 else a[:, :, None])
        back = np.asarray(Image.open(io.BytesIO(data)))
        assert back.shape == a.shape and np.array_equal(back, a)
    # compresses like Pillow's level 1 on a face texture-like image (within 25 %)
    pil = io.BytesIO()
    Image.fromarray(rgba[:, :, :3]).save(pil, format="PNG", compress_level=1)
    assert len(png_mod.encode_png(rgba[:, :, :3], compress_level=1)) < 1.25 * len(pil.getvalue())
