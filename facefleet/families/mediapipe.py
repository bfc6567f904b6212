"""The shipped families: MediaPipe's face mesh (468 points) and its attention mesh (478 points).

``mediapipe468``: ``face_landmark.tflite``, 468 mesh vertices (1404 values) and a face-presence logit.

``mediapipe478``: ``face_landmark_with_attention.tflite`` (same wheel). Besides the 468-vertex mesh it
predicts, from feature patches cropped around the mouth and eyes (MediaPipe custom operators, see
:mod:`facefleet.models.mediapipe_ops`), 80 lip points, 71 points per eye region and 5 iris points per
eye. As MediaPipe's ``TensorsToFaceLandmarksWithAttention`` graph does, the lip and eye points replace
the x, y of their mesh vertices (z stays the mesh's) and the iris points are appended: 468-472 the
subject's right iris (centre, then 4 points on its edge), 473-477 the left one, each with the mean z of
its eye's 16 contour vertices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from facefleet.families.base import FamilySpec, Topology

__all__ = ["EYE_CORNERS", "IRIS_LEFT", "IRIS_RIGHT", "MediaPipeMesh"]

CROP_SIZE = 192
N_MESH = 468

# the mesh vertices each refinement output replaces (MediaPipe's indexes_mapping), in output order
LIPS = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
    76, 77, 90, 180, 85, 16, 315, 404, 320, 307, 306, 184, 74, 73, 72, 11, 302, 303, 304, 408,
    62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292, 183, 42, 41, 38, 12, 268, 271, 272, 407,
)  # fmt: skip
EYE_RIGHT = (  # the subject's right eye (image left in a frontal photo); the first 16: its contour
    33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
    130, 25, 110, 24, 23, 22, 26, 112, 243, 247, 30, 29, 27, 28, 56, 190,
    226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223, 222, 221, 189,
    35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245,
    156, 70, 63, 105, 66, 107, 55, 193,
)  # fmt: skip
EYE_LEFT = (
    263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
    359, 255, 339, 254, 253, 252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414,
    446, 261, 448, 449, 450, 451, 452, 453, 464, 342, 445, 444, 443, 442, 441, 413,
    265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465,
    383, 300, 293, 334, 296, 336, 285, 417,
)  # fmt: skip
EYE_CONTOUR = 16
IRIS_RIGHT, IRIS_LEFT = 468, 473  # iris centres; each followed by 4 points on the iris edge
#: (outer, inner) corner vertices of the subject's right and left eye
EYE_CORNERS = ((33, 133), (263, 362))

# TFLite output names of the attention model, in the order the assembly takes them
_ATTENTION_OUTPUTS = (
    "output_mesh_identity",
    "output_lips",
    "output_left_eye",  # MediaPipe's "left" = image left = the subject's right
    "output_right_eye",
    "output_left_iris",
    "output_right_iris",
    "conv_faceflag",
)


class MediaPipeMesh:
    """A MediaPipe landmark network as a :class:`facefleet.families.MeshModel`.

    ``network``: crops ``(N, 3, 192, 192)`` in [0, 1] -> the TFLite outputs (batch first);
    ``assemble``: those outputs -> landmarks ``(N, V, 3)`` float32 crop pixels, presence logits ``(N,)``.
    """

    input_size = CROP_SIZE

    def __init__(
        self, network: Callable[..., Any], assemble: Callable[[Sequence[Tensor]], tuple[Tensor, Tensor]]
    ):
        self.network = network
        self._assemble = assemble

    def landmarks_from_crops(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        return self._assemble(self.network(crops))

    def roi_from_landmarks(self, landmarks: Tensor) -> Tensor:
        """MediaPipe's tracking ROI: the box of every landmark (the iris points lie inside the mesh's),
        rotated from vertex 33 to 263, scaled 1.5."""
        from facefleet.mesh.roi import roi_from_landmarks

        return roi_from_landmarks(landmarks)

    def warmup(self) -> None:
        warm = getattr(self.network, "warmup", None)
        if callable(warm):
            warm()


def _assemble_468(out: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    return out[0].float().reshape(-1, N_MESH, 3), out[1].float().reshape(-1)


class _Attention:
    """Assembles the attention model's outputs into 478 landmarks (index tensors made once per device)."""

    def __init__(self, order: Sequence[int]) -> None:
        self.order = tuple(order)
        self._idx: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def indices(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if device not in self._idx:
            self._idx[device] = tuple(  # type: ignore[assignment]
                torch.tensor(v, dtype=torch.long, device=device) for v in (LIPS, EYE_RIGHT, EYE_LEFT)
            )
        return self._idx[device]

    def __call__(self, out: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        mesh_t, lips, eye_r, eye_l, iris_r, iris_l, flag = (out[k] for k in self.order)
        n = int(mesh_t.shape[0])
        mesh = mesh_t.float().reshape(n, N_MESH, 3).clone()
        i_lips, i_eye_r, i_eye_l = self.indices(mesh.device)
        mesh[:, i_lips, :2] = lips.float().reshape(n, len(LIPS), 2)
        mesh[:, i_eye_r, :2] = eye_r.float().reshape(n, len(EYE_RIGHT), 2)
        mesh[:, i_eye_l, :2] = eye_l.float().reshape(n, len(EYE_LEFT), 2)
        irises = []
        for pts, idx in ((iris_r, i_eye_r), (iris_l, i_eye_l)):
            z = mesh[:, idx[:EYE_CONTOUR], 2].mean(1)  # (n,)
            irises.append(torch.cat([pts.float().reshape(n, 5, 2), z[:, None, None].expand(n, 5, 1)], 2))
        return torch.cat([mesh, *irises], 1), flag.float().reshape(-1)


def _output_order(network: Any) -> tuple[int, ...]:
    names = getattr(network, "output_names", None)
    if names is None:
        return tuple(range(len(_ATTENTION_OUTPUTS)))
    try:
        return tuple(list(names).index(n) for n in _ATTENTION_OUTPUTS)
    except ValueError as exc:
        raise ValueError(f"attention mesh network: outputs {names} lack one of {_ATTENTION_OUTPUTS}") from exc


def _load(name: str, device: torch.device, dtype: torch.dtype, model_dir: Any, compiled: bool | None) -> Any:
    from facefleet.models import load_model

    return load_model(name, device, dtype, model_dir, compiled=compiled)


def _make_468(
    device: torch.device,
    dtype: torch.dtype,
    model_dir: str | Path | None,
    compiled: bool | None,
    net: Callable[..., Any] | None,
) -> MediaPipeMesh:
    return MediaPipeMesh(
        net if net is not None else _load("face_landmark", device, dtype, model_dir, compiled), _assemble_468
    )


def _make_478(
    device: torch.device,
    dtype: torch.dtype,
    model_dir: str | Path | None,
    compiled: bool | None,
    net: Callable[..., Any] | None,
) -> MediaPipeMesh:
    if net is None:
        net = _load("face_landmark_with_attention", device, dtype, model_dir, compiled)
    return MediaPipeMesh(net, _Attention(_output_order(net)))


def _topology_468() -> Topology:
    from facefleet.geometry import load_geometry

    g = load_geometry()
    return Topology(
        n_vertices=N_MESH, n_mesh=N_MESH, triangles=g.triangles, uvs=g.uv, idx68=g.landmarks68_index
    )


def _topology_478() -> Topology:
    from facefleet.geometry import load_geometry

    g = load_geometry()
    iris_uv = [
        np.repeat(g.uv[list(eye[:EYE_CONTOUR])].mean(0, keepdims=True), 5, 0) for eye in (EYE_RIGHT, EYE_LEFT)
    ]
    uvs = np.concatenate([g.uv, *iris_uv]).astype(np.float32)
    uvs.setflags(write=False)
    return Topology(
        n_vertices=N_MESH + 10,
        n_mesh=N_MESH,
        triangles=g.triangles,
        uvs=uvs,
        idx68=g.landmarks68_index,
        extra={"iris_right": IRIS_RIGHT, "iris_left": IRIS_LEFT},
    )


MEDIAPIPE_468 = FamilySpec(
    name="mediapipe468",
    weights=("face_detection_short_range", "face_detection_full_range", "face_landmark"),
    description="MediaPipe face mesh: 468 3D landmarks (the default)",
    build_topology=_topology_468,
    make_model=_make_468,
)
MEDIAPIPE_478 = FamilySpec(
    name="mediapipe478",
    weights=("face_detection_short_range", "face_detection_full_range", "face_landmark_with_attention"),
    description="MediaPipe attention mesh: 468 landmarks (refined eyes and lips) and 2 x 5 iris points",
    build_topology=_topology_478,
    make_model=_make_478,
    litert=False,  # custom operators: the LiteRT interpreter cannot run it without MediaPipe's resolver
)
BUILTIN = (MEDIAPIPE_468, MEDIAPIPE_478)  # registered by facefleet.families.registry on first use
