"""MediaPipe's custom operators (attention mesh) against direct transcriptions of their C++ loops, and
the attention family's 478 landmarks against MediaPipe's own runtime.

The reference test needs a Python with ``mediapipe==0.10.21`` (not a facefleet dependency): point
``FACEFLEET_MEDIAPIPE_PYTHON`` at it (e.g. a venv made with ``python3.11 -m venv /tmp/mpvenv &&
/tmp/mpvenv/bin/pip install mediapipe==0.10.21``); it is skipped without one. Tolerance: crop-pixel
landmarks (x, y, z) within ``REF_TOL_PX`` of MediaPipe's on real face crops (measured: 3.4e-4 px max over
13 crops of ../shared/data/images), every crop MediaPipe keeps kept by us.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from facefleet.models.mediapipe_ops import (
    LandmarksToTransformMatrix,
    TransformLandmarks,
    TransformTensorBilinear,
)

REF_TOL_PX = 0.01
HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------- direct transcriptions (one face)


def _matrix_ref(
    lm: np.ndarray,
    subset: list[int],
    left: int,
    right: int,
    target: float,
    hw: tuple[int, int],
    scale: tuple[float, float],
) -> np.ndarray:
    l, r = lm[left], lm[right]
    rot = target - math.atan2(r[1] - l[1], r[0] - l[0])
    c, s = math.cos(rot), math.sin(rot)
    pts = [(c * lm[i][0] - s * lm[i][1], s * lm[i][0] + c * lm[i][1]) for i in subset]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    w, h = max(xs) - min(xs), max(ys) - min(ys)
    mx, my = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    cx, cy = math.cos(-rot) * mx - math.sin(-rot) * my, math.sin(-rot) * mx + math.cos(-rot) * my

    def m4(rows: list[list[float]]) -> np.ndarray:
        return np.array(rows, dtype=np.float64)

    t = m4([[1, 0, 0, cx], [0, 1, 0, cy], [0, 0, 1, 0], [0, 0, 0, 1]])
    q = -rot
    t = t @ m4(
        [[math.cos(q), -math.sin(q), 0, 0], [math.sin(q), math.cos(q), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    sx, sy = scale[0] * w / hw[1], scale[1] * h / hw[0]
    t = t @ m4([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return t @ m4([[1, 0, 0, -hw[1] / 2], [0, 1, 0, -hw[0] / 2], [0, 0, 1, 0], [0, 0, 0, 1]])


def _bilinear_ref(x_hwc: np.ndarray, m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h_in, w_in, ch = x_hwc.shape
    xt, yt = m[0].copy(), m[1].copy()
    xt[3] += xt[0] * 0.5 + xt[1] * 0.5 - 0.5
    yt[3] += yt[0] * 0.5 + yt[1] * 0.5 - 0.5
    out = np.zeros((*hw, ch))
    for v in range(hw[0]):
        for u in range(hw[1]):
            tx, ty = xt[0] * u + xt[1] * v + xt[3], yt[0] * u + yt[1] * v + yt[3]
            if tx < 0 or tx > w_in - 1 or ty < 0 or ty > h_in - 1:
                continue
            fx, fy = math.floor(tx), math.floor(ty)

            def rd(hh: int, ww: int) -> np.ndarray:
                return x_hwc[hh, ww] if 0 <= hh < h_in and 0 <= ww < w_in else np.zeros(ch)

            rc, lc = tx - fx, ty - fy
            upper = (1 - rc) * rd(fy, fx) + rc * rd(fy, fx + 1)
            lower = (1 - rc) * rd(fy + 1, fx) + rc * rd(fy + 1, fx + 1)
            out[v, u] = lc * lower + (1 - lc) * upper
    return out


def test_landmarks_to_transform_matrix_matches_the_reference_loop() -> None:
    g = np.random.default_rng(0)
    lm = g.uniform(0, 48, (3, 30, 3)).astype(np.float32)
    subset = [1, 4, 7, 9, 12, 20, 21]
    op = LandmarksToTransformMatrix(subset, 2, 5, 0.3, (16, 12), (1.5, 1.25))
    got = op(torch.from_numpy(lm)).numpy()
    assert got.shape == (3, 4, 4) and got.dtype == np.float32
    for b in range(3):
        ref = _matrix_ref(lm[b].astype(np.float64), subset, 2, 5, 0.3, (16, 12), (1.5, 1.25))
        np.testing.assert_allclose(got[b], ref, atol=2e-4, rtol=1e-5)


def test_transform_tensor_bilinear_matches_the_reference_loop_including_outside() -> None:
    g = np.random.default_rng(1)
    x = g.normal(size=(2, 5, 9, 11)).astype(np.float32)  # NCHW
    m = np.zeros((2, 4, 4), np.float32)
    # face 0: rotated and scaled inside the map; face 1: partly outside (those samples are zero)
    for b, (ang, sc, tx, ty) in enumerate(((0.4, 0.6, 3.0, 2.0), (-0.2, 1.3, 6.0, -3.0))):
        m[b, :2, :2] = sc * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        m[b, :2, 3] = (tx, ty)
        m[b, 2, 2] = m[b, 3, 3] = 1
    got = TransformTensorBilinear((6, 7))(torch.from_numpy(x), torch.from_numpy(m)).numpy()
    for b in range(2):
        ref = _bilinear_ref(x[b].transpose(1, 2, 0).astype(np.float64), m[b].astype(np.float64), (6, 7))
        np.testing.assert_allclose(got[b].transpose(1, 2, 0), ref, atol=1e-5)
    assert (got[1] == 0).any() and (got[1] != 0).any()  # both cases exercised


def test_transform_landmarks_maps_xy_and_keeps_z() -> None:
    g = np.random.default_rng(2)
    p = torch.from_numpy(g.normal(size=(2, 5, 3)).astype(np.float32))
    m = torch.from_numpy(g.normal(size=(2, 4, 4)).astype(np.float32))
    got = TransformLandmarks()(p, m)
    ref_xy = torch.einsum("bij,bnj->bni", m[:, :2, :2], p[..., :2]) + m[:, None, :2, 3]
    torch.testing.assert_close(got[..., :2], ref_xy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[..., 2], p[..., 2])
    assert TransformLandmarks()(p[..., :2], m).shape == (2, 5, 2)


# ------------------------------------------------------------------------- against MediaPipe itself


def compare_to_reference(ours: np.ndarray, ref: np.ndarray, tol: float = REF_TOL_PX) -> float:
    """Largest |ours - ref| over the crops MediaPipe kept (ref rows of NaN: dropped by it); raises
    AssertionError when it exceeds ``tol`` or when MediaPipe kept no crop."""
    assert ours.shape == ref.shape and ref.shape[1:] == (478, 3), (ours.shape, ref.shape)
    kept = ~np.isnan(ref).any(axis=(1, 2))
    assert kept.any(), "MediaPipe kept none of the crops"
    err = float(np.abs(ours[kept] - ref[kept]).max())
    assert err <= tol, f"max |ours - MediaPipe| {err:.4g} px > {tol} px"
    return err


def test_comparison_logic_accepts_close_and_rejects_off_landmarks() -> None:
    g = np.random.default_rng(3)
    ref = g.uniform(0, 192, (4, 478, 3)).astype(np.float32)
    ref[2] = np.nan  # dropped by MediaPipe: not compared
    ours = ref + 0.5 * REF_TOL_PX
    ours[2] = 0.0
    assert compare_to_reference(ours, ref) <= REF_TOL_PX
    off = ours.copy()
    off[1, 470, 0] += 0.5  # one iris point half a pixel off
    with pytest.raises(AssertionError, match="max"):
        compare_to_reference(off, ref)
    with pytest.raises(AssertionError, match="none"):
        compare_to_reference(ours, np.full_like(ref, np.nan))


def _mediapipe_python() -> str | None:
    exe = os.environ.get("FACEFLEET_MEDIAPIPE_PYTHON")
    return exe if exe and Path(exe).is_file() else None


def test_attention_mesh_matches_mediapipe_runtime(shared_data: Path, tmp_path: Path) -> None:
    exe = _mediapipe_python()
    if exe is None:
        pytest.skip(
            "no MediaPipe runtime: set FACEFLEET_MEDIAPIPE_PYTHON to a Python with mediapipe==0.10.21"
        )
    from facefleet.detect import FaceDetector
    from facefleet.io.decode import read_image
    from facefleet.mesh import MeshPredictor, crop_rois, roi_from_detections

    files = sorted((shared_data / "images").glob("*.jpg"))[:12]
    if not files:
        pytest.skip(f"no photos in {shared_data / 'images'}")
    imgs = [torch.from_numpy(read_image(f)).permute(2, 0, 1).contiguous() for f in files]
    det = FaceDetector(model="auto")(imgs)
    crops = crop_rois(imgs, det.image_index, roi_from_detections(det.boxes, det.keypoints), 192)
    u8 = (crops * 255).round().clamp(0, 255).to(torch.uint8)  # MediaPipe takes 8-bit images
    np.save(tmp_path / "crops.npy", u8.permute(0, 2, 3, 1).numpy())
    ours, _ = MeshPredictor(family="mediapipe478").model.landmarks_from_crops(u8.float() / 255)
    subprocess.run(
        [exe, str(HERE / "mediapipe_reference.py"), str(tmp_path / "crops.npy"), str(tmp_path / "ref.npz")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    ref = np.load(tmp_path / "ref.npz")["landmarks"]
    assert (~np.isnan(ref[:, 0, 0])).sum() >= len(files)  # a face per photo at least
    compare_to_reference(ours.numpy(), ref)
