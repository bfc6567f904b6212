"""Model families: what a mesh network family is (topology, weights, network adapter).

A family names a landmark network and everything its results' shapes depend on. The pipeline asks
the registry (:mod:`facefleet.families.registry`) for one by name
(``Reconstructor(family="mediapipe478")``) and takes every size from its :class:`Topology`: the
landmarks ``(V, 3)`` of :class:`facefleet.types.Face`, the Parquet columns and the mesh files.

>>> from facefleet.families import get_family, list_families     # doctest: +SKIP
>>> list_families()                                               # doctest: +SKIP
('mediapipe468', 'mediapipe478')
>>> get_family("mediapipe478").topology.n_vertices                 # doctest: +SKIP
478
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "FamilySpec",
    "MeshModel",
    "Topology",
]


@dataclass(frozen=True, eq=False)
class Topology:
    """The vertex layout of a family's landmarks (numpy, read-only).

    n_vertices: V, the landmarks per face; n_mesh: the first ``n_mesh`` landmarks are the vertices of
    the canonical 468-vertex face mesh (head pose and textures use them); the others are named extra
    points. triangles: (F, 3) int32 indices < n_mesh; uvs: (V, 2) float32 in [0, 1]^2, origin top-left
    (extra points get the UV of where they sit on the mesh); idx68: (68,) iBUG-68 landmark indices;
    extra: name -> landmark index of each extra point (e.g. ``"iris_right"``: the centre of the
    subject's right iris); eye_corners: (outer, inner) mesh indices of the subject's right and left eye.
    """

    n_vertices: int
    n_mesh: int
    triangles: np.ndarray
    uvs: np.ndarray
    idx68: np.ndarray
    extra: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tri, uv, idx = self.triangles, self.uvs, self.idx68
        if not 0 < self.n_mesh <= self.n_vertices:
            raise ValueError(f"Topology: n_mesh {self.n_mesh} outside (0, {self.n_vertices}]")
        if tri.ndim != 2 or tri.shape[1] != 3 or (tri.size and (tri.min() < 0 or tri.max() >= self.n_mesh)):
            raise ValueError(f"Topology: triangles must be (F, 3) indices < {self.n_mesh}")
        if uv.shape != (self.n_vertices, 2):
            raise ValueError(f"Topology: uvs must be ({self.n_vertices}, 2), got {uv.shape}")
        if idx.shape != (68,) or idx.min() < 0 or idx.max() >= self.n_vertices:
            raise ValueError(f"Topology: idx68 must be (68,) indices < {self.n_vertices}")
        for name, i in self.extra.items():
            if not self.n_mesh <= int(i) < self.n_vertices:
                raise ValueError(f"Topology: extra point {name!r} index {i} is not an extra landmark")

    @property
    def has_iris(self) -> bool:
        return "iris_right" in self.extra and "iris_left" in self.extra


class MeshModel(Protocol):
    """The network of a family, loaded on one device (what :class:`facefleet.mesh.MeshPredictor` calls).

    ``input_size``: side of the square crops; ``landmarks_from_crops``: crops ``(N, 3, S, S)`` in [0, 1]
    -> landmarks ``(N, V, 3)`` float32 in crop pixels (x right, y down; z in crop pixels, MediaPipe's
    sign: smaller = closer) and face-presence logits ``(N,)``; ``roi_from_landmarks``: image landmarks
    ``(N, V, 3)`` of one pass (or of the previous frame, for tracking) -> the ROIs ``(N, 5)`` (centre x,
    centre y, width, height, rotation; :mod:`facefleet.mesh.roi`) of the next; ``warmup``: prepare the
    network for its batch sizes now (CUDA plans and graphs) rather than on the first batch.
    """

    input_size: int
    network: Callable[..., object]

    def landmarks_from_crops(self, crops: Tensor) -> tuple[Tensor, Tensor]: ...

    def roi_from_landmarks(self, landmarks: Tensor) -> Tensor: ...

    def warmup(self) -> None: ...


#: ``(device, dtype, model_dir, compiled, net)`` -> a loaded :class:`MeshModel`; ``net`` replaces the
#: loaded network (a callable with the TFLite outputs of the family's weights) when not None.
ModelFactory = Callable[
    ["torch.device", "torch.dtype", "str | Path | None", "bool | None", "Callable[..., object] | None"],
    MeshModel,
]


@dataclass(frozen=True)
class FamilySpec:
    """A registered model family (frozen; its topology is built on first use and kept).

    name: registry key, e.g. ``"mediapipe468"``; weights: names of its weight files
    (:data:`facefleet.models.MODELS`); description: one line for listings; build_topology: makes the
    :class:`Topology`; make_model: a :data:`ModelFactory`; litert: whether the official LiteRT
    interpreter can run its weights (custom operators rule that out).
    """

    name: str
    weights: tuple[str, ...]
    description: str
    build_topology: Callable[[], Topology] = field(repr=False)
    make_model: ModelFactory = field(repr=False)
    litert: bool = True

    @cached_property
    def topology(self) -> Topology:
        return self.build_topology()

    def __hash__(self) -> int:
        return hash(self.name)
