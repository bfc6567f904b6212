"""Typed results of the reconstruction pipeline (the data contract of DESIGN.md).

Coordinates are pixels of the original image after EXIF orientation, origin top-left,
x right, y down; z uses the same pixel scale, larger = closer to the camera.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The detector families a face may come from (:attr:`Face.detector`).
FACE_SOURCES = ("blazeface", "centerface")


@dataclass(frozen=True)
class Pose:
    """Head pose in degrees plus the 4x4 transform canonical-face -> image space.

    ``matrix`` maps homogeneous canonical-shape coordinates (see ``facefleet.geometry``)
    to image pixel coordinates (x, y, z) of the reconstructed face: a similarity transform
    (uniform scale * rotation, translation).
    """

    yaw: float
    pitch: float
    roll: float
    matrix: np.ndarray  # (4, 4) float64

    def to_dict(self) -> dict[str, Any]:
        return {
            "yaw": float(self.yaw),
            "pitch": float(self.pitch),
            "roll": float(self.roll),
            "matrix": np.asarray(self.matrix, dtype=np.float64).tolist(),
        }


@dataclass(frozen=True)
class Gaze:
    """Gaze direction in degrees (families with iris points only; :mod:`facefleet.families.gaze`):
    yaw > 0 looks toward the subject's right (image left), pitch > 0 up; (0, 0) into the camera."""

    yaw: float
    pitch: float

    def to_dict(self) -> dict[str, float]:
        return {"yaw": round(float(self.yaw), 3), "pitch": round(float(self.pitch), 3)}


@dataclass
class Face:
    """One reconstructed face.

    bbox: (4,) x0, y0, x1, y1 of the detection; score: detector confidence;
    keypoints: detector keypoints ("right" = the subject's right): (6, 2) of a face BlazeFace found
    (right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion), (5, 2) of one
    only CenterFace found (right eye, left eye, nose tip, right mouth corner, left mouth corner);
    landmarks: (V, 3) landmarks, V and their order from the model family's topology
    (``facefleet.families``; 468 mesh vertices by default); landmarks68: (68, 2) iBUG-68 subset;
    presence: face-presence probability of the mesh network;
    texture: optional (T, T, 4) uint8 RGBA UV texture, alpha = visible texels;
    gaze: gaze direction, for families with iris points (None otherwise);
    detector: the detector family that found the face, "blazeface" or "centerface" (its keypoints' scheme);
    small: the face's box side is under the pipeline's ``small_face`` pixels: the mesh (landmarks, pose,
    texture) is computed but not reliable at that size, and the face is kept whatever its presence, so
    that anonymisation covers it (box, score, keypoints).

    In :meth:`to_dict` (the JSON files) ``detector`` appears when it is not "blazeface" and ``small``
    when it is true, so that BlazeFace's faces read as before.
    """

    bbox: np.ndarray
    score: float
    keypoints: np.ndarray
    landmarks: np.ndarray
    landmarks68: np.ndarray
    pose: Pose
    presence: float = 1.0
    texture: np.ndarray | None = field(default=None, repr=False)
    gaze: Gaze | None = None
    detector: str = "blazeface"
    small: bool = False

    def to_dict(self) -> dict[str, Any]:
        def r(a: np.ndarray, nd: int = 3) -> Any:
            return np.round(np.asarray(a, dtype=np.float64), nd).tolist()

        out: dict[str, Any] = {
            "bbox": r(self.bbox, 2),
            "score": round(float(self.score), 5),
            "keypoints": r(self.keypoints, 2),
            "landmarks": r(self.landmarks, 3),
            "landmarks68": r(self.landmarks68, 3),
            "pose": self.pose.to_dict(),
            "presence": round(float(self.presence), 5),
        }
        if self.gaze is not None:
            out["gaze"] = self.gaze.to_dict()
        if self.detector != "blazeface":
            out["detector"] = self.detector
        if self.small:
            out["small"] = True
        return out


@dataclass
class ImageResult:
    """Everything facefleet found in one image. ``error`` is set (and ``faces`` empty)
    when the image could not be read or processed."""

    source: str
    width: int
    height: int
    faces: list[Face] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "width": int(self.width),
            "height": int(self.height),
            "faces": [f.to_dict() for f in self.faces],
            "error": self.error,
        }
