"""Debug / preview overlays: mesh wireframe, box, keypoints and pose axes drawn on the photo."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["OverlayFace", "pose_axes_2d", "render_overlay"]

_AXIS_COLORS = ((230, 40, 40), (40, 200, 60), (50, 110, 255))  # x red, y green, z blue
_NOSE_TIP = 1  # MediaPipe face-mesh landmark index of the nose tip
_MESH_VERTICES = 468  # landmarks of MediaPipe's face mesh (families add theirs after these)


@dataclass(frozen=True)
class OverlayFace:
    """What :func:`render_overlay` draws for one face (image pixels, origin top-left, y down).

    landmarks: (N, 2|3) mesh vertices; triangles: (F, 3) vertex indices (None: draw points);
    bbox: (4,) x0, y0, x1, y1; pose: (4, 4) canonical->image matrix, or (yaw, pitch, roll)
    degrees; keypoints: (K, 2) detector keypoints (index 2 = nose tip).
    """

    landmarks: np.ndarray | None = None
    triangles: np.ndarray | None = None
    bbox: np.ndarray | None = None
    pose: np.ndarray | Sequence[float] | None = None
    keypoints: np.ndarray | None = None


def _coerce(face: Any, triangles: np.ndarray | None) -> OverlayFace:
    if isinstance(face, OverlayFace):
        return (
            face
            if face.triangles is not None or triangles is None
            else OverlayFace(face.landmarks, triangles, face.bbox, face.pose, face.keypoints)
        )
    if isinstance(face, (tuple, list)):
        items = [*list(face), None, None, None, None, None][:5]
        lm, tri, bbox, pose, kps = items
        return OverlayFace(lm, tri if tri is not None else triangles, bbox, pose, kps)
    if hasattr(face, "landmarks"):  # facefleet.types.Face or anything shaped like it
        pose_obj = getattr(face, "pose", None)
        pose = getattr(pose_obj, "matrix", pose_obj)
        return OverlayFace(
            face.landmarks, triangles, getattr(face, "bbox", None), pose, getattr(face, "keypoints", None)
        )
    raise TypeError(f"render_overlay: cannot draw a face of type {type(face).__name__}")


def _rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Ry(yaw) @ Rx(pitch) @ Rz(roll) (degrees) in a right-handed y-up frame, camera on +z."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def pose_axes_2d(pose: np.ndarray | Sequence[float]) -> np.ndarray:
    """(3, 2) unit-length-scaled image-plane directions (x right, y down) of the head's x, y, z axes.

    A (4, 4) matrix maps canonical (y-up) coordinates to image pixels, so its rotation columns
    are already image directions (scale removed). Angles (yaw, pitch, roll) build a y-up rotation
    (see ``_rotation_from_angles``), flipped to y-down for drawing. Orthographic projection: an
    axis pointing at the camera gets a short arrow.
    """
    arr = np.asarray(pose, dtype=np.float64)
    if arr.shape == (4, 4) or arr.shape == (3, 4) or arr.shape == (3, 3):
        m = arr[:3, :3]
        norms = np.linalg.norm(m, axis=0)
        cols = m / np.where(norms > 1e-12, norms, 1.0)
        return cols[:2, :].T.copy()
    if arr.shape == (3,):
        r = _rotation_from_angles(*arr.tolist())
        return np.stack([r[0, :], -r[1, :]], axis=1)
    raise ValueError(f"pose must be a (4, 4) matrix or (yaw, pitch, roll), got shape {arr.shape}")


def _edges(triangles: np.ndarray) -> np.ndarray:
    t = np.asarray(triangles, dtype=np.int64)
    e = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]], axis=0)
    e.sort(axis=1)
    return np.unique(e, axis=0)


def _face_size(f: OverlayFace) -> float:
    if f.bbox is not None:
        b = np.asarray(f.bbox, dtype=np.float64)
        return float(max(b[2] - b[0], b[3] - b[1], 1.0))
    if f.landmarks is not None:
        lm = np.asarray(f.landmarks, dtype=np.float64)[:, :2]
        return float(max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1]), 1.0))
    return 1.0


def _anchor(f: OverlayFace) -> np.ndarray | None:
    if f.landmarks is not None and len(f.landmarks) >= _MESH_VERTICES:  # a MediaPipe mesh (468 or more)
        return np.asarray(f.landmarks, dtype=np.float64)[_NOSE_TIP, :2]
    if f.keypoints is not None and len(f.keypoints) > 2:
        return np.asarray(f.keypoints, dtype=np.float64)[2, :2]
    if f.bbox is not None:
        b = np.asarray(f.bbox, dtype=np.float64)
        return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
    return None


def render_overlay(
    image: np.ndarray,
    faces: Sequence[OverlayFace | Any],
    triangles: np.ndarray | None = None,
    *,
    mesh_color: tuple[int, int, int] = (255, 255, 255),
    mesh_opacity: float = 0.45,
    box_color: tuple[int, int, int] = (0, 230, 120),
    keypoint_color: tuple[int, int, int] = (255, 200, 0),
    axis_scale: float = 0.6,
) -> np.ndarray:
    """Draw faces on a copy of ``image`` (H, W, 3) uint8; returns (H, W, 3) uint8.

    ``faces`` items are :class:`OverlayFace`, ``(landmarks, triangles, bbox, pose, keypoints)``
    tuples (trailing items optional) or ``facefleet.types.Face`` objects; ``triangles`` (F, 3) is
    used for items that carry none. Drawn: the mesh wireframe (thin, ``mesh_opacity``
    translucent), the box, the keypoints and the pose axes (x red, y green, z blue) from the nose
    tip, ``axis_scale`` x the face size long. Line widths scale with image and face size, so the
    result reads the same at 512 and 4000 pixels.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"render_overlay: image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    short = min(h, w)
    items = [_coerce(f, triangles) for f in faces]
    base = Image.fromarray(np.ascontiguousarray(img)).convert("RGBA")
    mesh_layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    mesh_draw = ImageDraw.Draw(mesh_layer)
    mesh_fill = (*mesh_color, round(255 * float(np.clip(mesh_opacity, 0.0, 1.0))))
    for f in items:
        if f.landmarks is None:
            continue
        lm = np.asarray(f.landmarks, dtype=np.float64)[:, :2]
        if not np.isfinite(lm).all():
            continue
        width = max(1, round(min(short / 700.0, _face_size(f) / 300.0)))
        if f.triangles is not None and len(f.triangles):
            for a, b in _edges(f.triangles):
                mesh_draw.line([tuple(lm[a]), tuple(lm[b])], fill=mesh_fill, width=width)
        else:
            r = max(1.0, width)
            for x, y in lm:
                mesh_draw.ellipse([x - r, y - r, x + r, y + r], fill=mesh_fill)
    out = Image.alpha_composite(base, mesh_layer).convert("RGB")
    draw = ImageDraw.Draw(out)
    line_w = max(2, round(short / 300.0))
    for f in items:
        size = _face_size(f)
        thick = max(1, min(line_w, round(size / 60.0)))
        if f.bbox is not None:
            b = np.asarray(f.bbox, dtype=np.float64)
            if np.isfinite(b).all():
                draw.rectangle(
                    [float(b[0]), float(b[1]), float(b[2]), float(b[3])], outline=box_color, width=thick
                )
        if f.keypoints is not None:
            r = 1.5 * thick + 1
            for x, y in np.asarray(f.keypoints, dtype=np.float64)[:, :2]:
                if math.isfinite(x) and math.isfinite(y):
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=keypoint_color)
        anchor = _anchor(f)
        if f.pose is not None and anchor is not None and np.isfinite(anchor).all():
            dirs = pose_axes_2d(f.pose) * (axis_scale * size)
            # Draw z first so x and y stay visible when it points at the camera.
            for k in (2, 1, 0):
                tip = anchor + dirs[k]
                draw.line([tuple(anchor), tuple(tip)], fill=_AXIS_COLORS[k], width=thick + 1)
                r = thick + 1
                draw.ellipse([tip[0] - r, tip[1] - r, tip[0] + r, tip[1] + r], fill=_AXIS_COLORS[k])
    return np.asarray(out).copy()
