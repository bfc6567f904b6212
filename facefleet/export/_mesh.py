"""Shared mesh helpers of the exporters: validation, image -> y-up frame, normals."""

from __future__ import annotations

import numpy as np

__all__ = ["MeshArrays", "prepare_mesh", "vertex_normals"]


class MeshArrays:
    """Validated mesh in the exported y-up frame.

    vertices: (V, 3) float32 (x, -y, z) of the image-space input; triangles: (F, 3) int64 with
    counter-clockwise winding seen from the front (+z); uv: (V, 2) float32 or None, origin
    top-left as given; texture: (T, T', 4) uint8 RGBA or None.
    """

    __slots__ = ("texture", "triangles", "uv", "vertices")

    def __init__(
        self, vertices: np.ndarray, triangles: np.ndarray, uv: np.ndarray | None, texture: np.ndarray | None
    ) -> None:
        self.vertices = vertices
        self.triangles = triangles
        self.uv = uv
        self.texture = texture


def _as_rgba(texture: np.ndarray) -> np.ndarray:
    t = np.asarray(texture)
    if t.dtype != np.uint8:
        raise ValueError(f"texture must be uint8, got {t.dtype}")
    if t.ndim == 2:
        t = np.stack([t, t, t, np.full_like(t, 255)], axis=-1)
    elif t.ndim == 3 and t.shape[2] == 3:
        t = np.concatenate([t, np.full((*t.shape[:2], 1), 255, np.uint8)], axis=-1)
    elif not (t.ndim == 3 and t.shape[2] == 4):
        raise ValueError(f"texture must be (T, T, 4) RGBA uint8, got shape {t.shape}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"texture has zero size {t.shape}")
    return np.ascontiguousarray(t)


def prepare_mesh(
    vertices: np.ndarray,
    triangles: np.ndarray,
    uv: np.ndarray | None,
    texture: np.ndarray | None,
    *,
    fix_winding: bool = True,
) -> MeshArrays:
    """Validate shapes and convert image coordinates (x right, y down, z toward the camera) to
    a right-handed y-up frame ``(x, -y, z)``.

    The image frame is left-handed and the y flip mirrors the mesh, which reverses the apparent
    winding. With ``fix_winding`` the triangle order is chosen from the data so the result is
    counter-clockwise seen from the front (+z, where the camera was): if the area-weighted
    normals point away from the camera on the whole, every triangle is reversed (v0, v2, v1).
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] not in (2, 3) or v.shape[0] == 0:
        raise ValueError(f"vertices must be (V, 3), got shape {v.shape}")
    if v.shape[1] == 2:
        v = np.concatenate([v, np.zeros((v.shape[0], 1))], axis=1)
    if not np.isfinite(v).all():
        raise ValueError("vertices contain NaN or infinite values")
    f = np.asarray(triangles)
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"triangles must be (F, 3) integers, got shape {f.shape} dtype {f.dtype}")
    f = f.astype(np.int64)
    if f.size and (f.min() < 0 or f.max() >= v.shape[0]):
        raise ValueError(f"triangle indices out of range [0, {v.shape[0]}): min {f.min()}, max {f.max()}")
    uv_arr: np.ndarray | None = None
    if uv is not None:
        uv_arr = np.asarray(uv, dtype=np.float32)
        if uv_arr.shape != (v.shape[0], 2):
            raise ValueError(f"uv must be (V, 2) = ({v.shape[0]}, 2), got shape {uv_arr.shape}")
    tex = _as_rgba(texture) if texture is not None else None
    out = v * np.array([1.0, -1.0, 1.0])
    if fix_winding and f.size:
        a, b, c = out[f[:, 0]], out[f[:, 1]], out[f[:, 2]]
        front = np.cross(b - a, c - a)[:, 2].sum()
        if front < 0:
            f = f[:, [0, 2, 1]]
    return MeshArrays(out.astype(np.float32), np.ascontiguousarray(f), uv_arr, tex)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V, 3) float32 unit, area-weighted vertex normals (CCW = front); (0, 0, 1) for loose vertices."""
    v = vertices.astype(np.float64)
    a, b, c = v[triangles[:, 0]], v[triangles[:, 1]], v[triangles[:, 2]]
    fn = np.cross(b - a, c - a)
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, triangles[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(length > 1e-12, n / np.maximum(length, 1e-12), np.array([0.0, 0.0, 1.0]))
    return n.astype(np.float32)
