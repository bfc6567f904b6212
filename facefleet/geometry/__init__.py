"""Face geometry: canonical shape, mesh topology, UV layout, 68-point map and head pose.

All of it is derived from the MediaPipe face-landmark network's own outputs by
``scripts/make_geometry.py`` and shipped as ``data/face_geometry.npz`` (see that script for how).

Frames
------
* **Canonical frame** (``FaceGeometry.canonical``): right-handed, x to the image right (the
  subject's left), y **up**, z toward the camera; centred at the mean vertex; centimetre-like
  units (the face is 15 wide). Pitch zero is the mean head pitch of the frontal portrait photos
  the shape was averaged from.
* **Image frame** (the facefleet data contract): pixels, x right, y **down**, z toward the camera
  (larger = closer), same scale as x. This frame is left-handed, so poses are estimated after
  flipping y (``F = diag(1, -1, 1)``): ``image = F (s R canonical + t)``.

Mesh
----
``triangles`` (F, 3) are counter-clockwise seen from the camera in the canonical frame (normals
toward +z; the few triangles under the nose tip face slightly down). Edge-manifold, one
component, four boundary loops: the face outline, two eye openings, the mouth opening.
``uv`` (468, 2) in [0, 1]^2, origin top-left, v down (glTF / image convention; OBJ writers emit
``1 - v``). In (u, v) with v down every UV triangle is clockwise (counter-clockwise with v up).

Euler angles (degrees), AFLW2000-3D / 300W-LP ``Pose_Para`` convention
-------------------------------------------------------------------------
With ``R`` the head rotation (canonical -> camera) in the right-handed camera frame,
``R.T = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (standard right-handed axis rotations), i.e.
``R = Rx(-pitch) @ Ry(-yaw) @ Rz(-roll)``. In words:

* yaw > 0: the subject turns to their right (the face points toward the image left);
* pitch > 0: the subject looks up;
* roll > 0: the head tilts toward the subject's left shoulder (clockwise as the image is shown).

The signs agree with the ``Pose_Para`` angles of AFLW2000-3D (tests/test_geometry_pose.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from facefleet.types import Pose

if TYPE_CHECKING:  # torch is imported where it is used: file writers need only the geometry arrays
    import torch
    from torch import Tensor

__all__ = [
    "FaceGeometry",
    "PoseBatch",
    "estimate_pose",
    "euler_to_matrix",
    "load_geometry",
    "to_landmarks68",
]

_FLIP_Y = (1.0, -1.0, 1.0)


@dataclass(frozen=True)
class FaceGeometry:
    """The shipped face geometry (numpy, read-only).

    canonical (468, 3) float32; triangles (F, 3) int32; uv (468, 2) float32;
    landmarks68_index (68,) int32; weights (468,) float32 Procrustes weights (mean 1, 0 on the
    lid and lip contours); mirror (468,) int32 left/right partner of each vertex;
    eye_right / eye_left / mouth: ordered opening contours (vertex indices; "right" = the
    subject's right, x < 0).
    """

    canonical: np.ndarray
    triangles: np.ndarray
    uv: np.ndarray
    landmarks68_index: np.ndarray
    weights: np.ndarray
    mirror: np.ndarray
    eye_right: np.ndarray
    eye_left: np.ndarray
    mouth: np.ndarray

    @property
    def num_vertices(self) -> int:
        return int(self.canonical.shape[0])


@lru_cache(maxsize=1)
def load_geometry() -> FaceGeometry:
    """Load ``facefleet/geometry/data/face_geometry.npz`` once (cached)."""
    ref = resources.files("facefleet.geometry").joinpath("data/face_geometry.npz")
    try:
        with ref.open("rb") as fh, np.load(fh) as z:
            arrays = {k: np.array(z[k]) for k in z.files}
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{ref}: missing; regenerate it with scripts/make_geometry.py") from exc
    need = [
        "canonical",
        "triangles",
        "uv",
        "landmarks68",
        "weights",
        "mirror",
        "eye_right",
        "eye_left",
        "mouth",
    ]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ValueError(f"{ref}: missing arrays {missing}; regenerate it with scripts/make_geometry.py")
    for a in arrays.values():
        a.setflags(write=False)
    return FaceGeometry(
        canonical=arrays["canonical"],
        triangles=arrays["triangles"],
        uv=arrays["uv"],
        landmarks68_index=arrays["landmarks68"],
        weights=arrays["weights"],
        mirror=arrays["mirror"],
        eye_right=arrays["eye_right"],
        eye_left=arrays["eye_left"],
        mouth=arrays["mouth"],
    )


@dataclass(frozen=True)
class PoseBatch:
    """Head poses of N faces (tensors on the landmarks' device).

    yaw, pitch, roll: (N,) degrees (conventions in the module docstring); matrix: (N, 4, 4) maps
    homogeneous canonical coordinates to image coordinates (x right, y down, z closer = larger);
    scale: (N,) image pixels per canonical unit.
    """

    yaw: Tensor
    pitch: Tensor
    roll: Tensor
    matrix: Tensor
    scale: Tensor

    def __len__(self) -> int:
        return int(self.yaw.shape[0])

    def to_poses(self) -> list[Pose]:
        """One :class:`facefleet.types.Pose` per face (moves the small tensors to the host)."""
        import torch

        ypr = torch.stack([self.yaw, self.pitch, self.roll], 1).detach().double().cpu().numpy()
        mats = self.matrix.detach().double().cpu().numpy()
        return [Pose(float(y), float(p), float(r), m) for (y, p, r), m in zip(ypr, mats, strict=True)]


@lru_cache(maxsize=8)
def _device_arrays(device: str, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Canonical shape, weights, 68-point index and the y flip on ``device`` (made once: a copy from
    the host waits for the device's queued work)."""
    import torch

    g = load_geometry()
    can = torch.tensor(g.canonical, dtype=dtype, device=device)
    w = torch.tensor(g.weights, dtype=dtype, device=device)
    idx = torch.tensor(g.landmarks68_index, dtype=torch.long, device=device)
    flip = torch.tensor(_FLIP_Y, dtype=dtype, device=device)
    return can, w, idx, flip


def estimate_pose(landmarks: Tensor, weights: Tensor | None = None) -> PoseBatch:
    """Weighted similarity (Umeyama) fit of the canonical shape to each face.

    landmarks: (N, 468, 3) image coordinates (x right, y down, z larger = closer);
    weights: optional (468,) per-vertex weights (default: the shipped rigid-region weights).
    Returns a :class:`PoseBatch`; runs batched on the landmarks' device (float64 for the SVD
    on CPU/CUDA unless the input is float64 already, then cast back).
    """
    import torch

    v = load_geometry().num_vertices
    if landmarks.ndim != 3 or landmarks.shape[1:] != (v, 3):
        raise ValueError(f"estimate_pose: expected landmarks (N, {v}, 3), got {tuple(landmarks.shape)}")
    out_dtype = landmarks.dtype if landmarks.is_floating_point() else torch.float32
    dtype = torch.float64 if landmarks.device.type != "mps" else torch.float32
    dev = landmarks.device
    can, w_def, _, flip = _device_arrays(str(dev), dtype)
    w = (w_def if weights is None else weights.to(device=dev, dtype=dtype)).clamp_min(0)
    w = w / w.sum()
    # q = x * flip: right-handed (x right, y up, z toward the camera). The flip (+-1 per axis, exact) is
    # applied to the reductions of x, not to every point: the same values, one pass over the (N, 468, 3)
    # points fewer (estimate_pose on 128 faces: 3.1 -> 1.8 ms on one core of the development machine)
    x = landmarks.to(dtype)
    mu_c = w @ can  # (3,)
    mu_q = flip * (w @ x)  # (N, 3)
    a = can - mu_c
    # sum_v w_v (q_v - mu_q) a_v^T = sum_v w_v q_v a_v^T, as sum_v w_v a_v = 0: one batched matrix
    # product (the centred form took ~8x longer on the host, where the engine fits its poses)
    cov = flip[:, None] * (x.transpose(1, 2) @ (w[:, None] * a))  # (N, 3, 3)
    u, sv, vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(u @ vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    diag = torch.ones(len(x), 3, dtype=dtype, device=dev)
    diag[:, 2] = d
    rot = u @ (diag[:, :, None] * vh)  # proper rotations, (N, 3, 3)
    var_c = (w * (a * a).sum(1)).sum()
    scale = (sv * diag).sum(1) / var_c
    trans = mu_q - scale[:, None] * torch.einsum("nij,j->ni", rot, mu_c)
    m = torch.zeros(len(x), 4, 4, dtype=dtype, device=dev)
    m[:, :3, :3] = flip[None, :, None] * (scale[:, None, None] * rot)
    m[:, :3, 3] = flip * trans
    m[:, 3, 3] = 1.0
    rt = rot.transpose(1, 2)  # = Rz(roll) @ Ry(yaw) @ Rx(pitch)
    yaw = torch.rad2deg(torch.asin((-rt[:, 2, 0]).clamp(-1.0, 1.0)))
    pitch = torch.rad2deg(torch.atan2(rt[:, 2, 1], rt[:, 2, 2]))
    roll = torch.rad2deg(torch.atan2(rt[:, 1, 0], rt[:, 0, 0]))
    return PoseBatch(
        yaw=yaw.to(out_dtype),
        pitch=pitch.to(out_dtype),
        roll=roll.to(out_dtype),
        matrix=m.to(out_dtype),
        scale=scale.to(out_dtype),
    )


def euler_to_matrix(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """(N,) degrees -> (N, 3, 3) head rotation ``R`` (canonical -> right-handed camera frame) with
    the module's convention: ``R.T = Rz(roll) @ Ry(yaw) @ Rx(pitch)``."""
    import torch

    y, p, r = (torch.deg2rad(t) for t in (yaw, pitch, roll))
    one, zero = torch.ones_like(y), torch.zeros_like(y)
    rx = torch.stack([one, zero, zero, zero, p.cos(), -p.sin(), zero, p.sin(), p.cos()], -1)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1)
    rz = torch.stack([r.cos(), -r.sin(), zero, r.sin(), r.cos(), zero, zero, zero, one], -1)
    n = y.shape[0]
    return (rz.view(n, 3, 3) @ ry.view(n, 3, 3) @ rx.view(n, 3, 3)).transpose(1, 2)


def to_landmarks68(landmarks: Tensor) -> Tensor:
    """(N, 468, 3) or (N, 468, 2) -> (N, 68, 2) iBUG-68 points (x, y), same device and dtype."""
    import torch

    v = load_geometry().num_vertices
    if landmarks.ndim != 3 or landmarks.shape[1] != v:
        raise ValueError(f"to_landmarks68: expected landmarks (N, {v}, C), got {tuple(landmarks.shape)}")
    idx = _device_arrays(str(landmarks.device), torch.float32)[2]
    return landmarks[:, idx, :2]
