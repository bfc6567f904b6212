"""Gaze direction from the iris points of a family with iris (``mediapipe478``).

Model: each eyeball is a sphere behind the eye opening. Its centre is the midpoint of the eye's two
corners moved back, against the head's facing direction, by ``EYEBALL_DEPTH`` times the eye's width
(corner to corner); the gaze is the ray from that centre through the iris centre. All of it in the
image frame (x right, y down, z toward the camera, pixels), where MediaPipe's landmarks keep x, y and z
in one scale. The angles follow the head pose's convention (:mod:`facefleet.geometry`): yaw > 0 looks
toward the subject's right (the image left), pitch > 0 looks up; (0, 0) looks straight into the camera.
"""

from __future__ import annotations

import numpy as np

from facefleet.families.base import Topology

__all__ = ["EYEBALL_DEPTH", "gaze_angles"]

#: eyeball centre depth behind the corners' midpoint, in eye widths: an adult eyeball's radius is
#: ~12 mm, its visible opening ~30 mm wide, and the corners sit ~4-5 mm in front of the centre plane
EYEBALL_DEPTH = 0.4

# (outer, inner) corner vertices of the subject's right and left eye (MediaPipe's mesh)
_CORNERS = ((33, 133), (263, 362))


def gaze_angles(landmarks: np.ndarray, pose_matrix: np.ndarray, topology: Topology) -> np.ndarray:
    """Per-face gaze ``(N, 2)`` float32 (yaw, pitch) in degrees, both eyes averaged.

    landmarks: ``(N, V, 3)`` image coordinates of a family with iris points (``topology.has_iris``);
    pose_matrix: ``(N, 4, 4)`` canonical -> image maps (:func:`facefleet.geometry.estimate_pose`),
    whose third column is the head's facing direction (canonical +z) in the image frame.
    """
    if not topology.has_iris:
        raise ValueError("gaze_angles: the family has no iris points")
    lm = np.asarray(landmarks, dtype=np.float64)
    fwd = np.asarray(pose_matrix, dtype=np.float64)[:, :3, 2]
    fwd = fwd / np.maximum(np.linalg.norm(fwd, axis=1, keepdims=True), 1e-12)
    dirs = []
    for (outer, inner), iris in zip(
        _CORNERS, (topology.extra["iris_right"], topology.extra["iris_left"]), strict=True
    ):
        a, b = lm[:, outer], lm[:, inner]
        width = np.linalg.norm(a - b, axis=1, keepdims=True)
        centre = (a + b) / 2 - EYEBALL_DEPTH * width * fwd
        d = lm[:, iris] - centre
        dirs.append(d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12))
    g = dirs[0] + dirs[1]
    yaw = np.degrees(np.arctan2(-g[:, 0], g[:, 2]))
    pitch = np.degrees(np.arctan2(-g[:, 1], np.hypot(g[:, 0], g[:, 2])))
    return np.stack([yaw, pitch], 1).astype(np.float32)
