"""The mesh arrays to write a face's landmarks with: triangles and UVs of its model family's topology."""

from __future__ import annotations

import numpy as np

__all__ = ["mesh_topology"]


def mesh_topology(n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """``(triangles (F, 3) int32, uvs (V, 2) float32)`` for landmarks of ``n_vertices`` points, from the
    registered model family with that many (:func:`facefleet.families.family_for_vertices`): e.g. 468
    (MediaPipe's mesh) or 478 (the attention mesh: the same triangles, its 10 iris points loose vertices
    with their eye's UV). ``KeyError`` when no family has ``n_vertices`` landmarks."""
    from facefleet.families import family_for_vertices

    topo = family_for_vertices(n_vertices).topology
    return topo.triangles, topo.uvs
